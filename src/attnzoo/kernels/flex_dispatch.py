"""Inference forward of the sparse kernels through compiled FlexAttention, where it is faster.

On CPU, ``torch.compile``-d :func:`torch.nn.attention.flex_attention.flex_attention` runs a fused
block-sparse kernel: for wide 1-D windows it beats attnzoo's tiled batched-GEMM kernels (see
``reports/sparse``). It has no CPU backward and, compiled on CPU, no ``return_lse`` either, so it
can only serve calls that need no gradient: :func:`neighborhood`, :func:`band` and :func:`groups`
return its output when

* no input requires a gradient under grad mode (training keeps attnzoo's own kernels, whose
  backward is exact), no dropout / bias / capture (the callers check these) and no
  :func:`attnzoo.training.hook.score_perturbation`, not while
  ``torch.compile`` or ``torch.export`` traces, the tensors are fp32 on CPU;
* the shape is one where Flex won in the committed sweep: 1-D, at least :data:`MIN_TOKENS` tokens
  and :data:`MIN_KEYS` keys per query (:func:`wins`);

and ``None`` otherwise (the caller runs its own kernel). Each decision is logged at debug level on
the ``attnzoo.kernels.flex_dispatch`` logger with the path taken and why. The first call at a new
shape compiles Flex and builds its block mask (seconds); both are cached per shape. The
environment variable ``ATTNZOO_FLEX=0`` turns the dispatch off.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from attnzoo.training.hook import perturbing

__all__ = ["MIN_KEYS", "MIN_TOKENS", "axis_window", "band", "groups", "neighborhood", "recorded", "wins"]

logger = logging.getLogger(__name__)

MIN_TOKENS = 1024
MIN_KEYS = 64
"""Flex serves 1-D neighbourhoods and sliding windows of at least :data:`MIN_TOKENS` tokens and
``MIN_KEYS`` keys per query, and S2 groups that need a mask (shifted groups or sinks)."""


def wins(nd: int, n: int, keys: int) -> tuple[bool, str]:
    """Whether compiled Flex is expected to beat attnzoo's kernel on an ``nd``-D pattern of ``n``
    tokens and ``keys`` keys per query, with the reason (thresholds from the committed sweep)."""
    if nd != 1:
        return False, f"{nd}-D: the tiled kernel is faster"
    if n < MIN_TOKENS:
        return False, f"N={n} < {MIN_TOKENS}: the tiled kernel is faster"
    if keys < MIN_KEYS:
        return False, f"{keys} keys per query < {MIN_KEYS}: the tiled kernel is faster"
    return True, f"1-D, N={n} >= {MIN_TOKENS} and {keys} >= {MIN_KEYS} keys per query"


@contextlib.contextmanager
def recorded() -> Iterator[list[str]]:
    """Collect the dispatch decisions (the debug messages) made while active, without printing them."""
    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _eligible(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why Flex may not serve this call, or ``None`` if it may."""
    if os.environ.get("ATTNZOO_FLEX", "1") == "0":
        return "ATTNZOO_FLEX=0"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return "gradients needed (compiled CPU Flex has no backward)"
    if perturbing():
        return "a score perturbation is active (it needs the materialised scores)"
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return "inside torch.compile / torch.export"
    if is_in_torch_dispatch_mode() or any(type(t) is not torch.Tensor for t in (q, k, v)):
        return "under a dispatch mode (e.g. FLOP counting) or on a tensor subclass, where Flex cannot run"
    if q.device.type != "cpu" or q.dtype != torch.float32 or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"{q.device.type} {q.dtype}: only fp32 CPU was measured"
    return None


def axis_window(
    qc: torch.Tensor, kc: torch.Tensor, length: int, k: int, dil: int, causal: bool
) -> torch.Tensor:
    """Whether key positions ``kc`` lie in the neighbourhood of query positions ``qc`` on one axis of
    ``length`` (NATTEN's window, :mod:`attnzoo.kernels.neighborhood`: same dilation group, then ``k``
    consecutive group positions shifted inside at the borders, or ``[m - k + 1, m]`` when causal), as
    index arithmetic (the mask predicate of FlexAttention's block masks)."""
    same = (qc % dil) == (kc % dil)
    m, km = qc // dil, kc // dil
    if causal:
        return same & (km <= m) & (km > m - k)
    group_len = (length - qc % dil + dil - 1) // dil
    start = torch.minimum(torch.clamp(m - k // 2, min=0), group_len - k)
    return same & (km >= start) & (km < start + k)


@functools.lru_cache(maxsize=32)
def _block_mask(pattern: tuple[Any, ...], n: int, device: str) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    if pattern[0] == "band":
        left, right = pattern[1:]

        def mod(b: Any, h: Any, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
            return (ki >= qi - left) & (ki <= qi + right)
    elif pattern[0] == "group":
        g, offset, sinks, causal = pattern[1:]

        def mod(b: Any, h: Any, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
            ok = ((qi + offset) // g == (ki + offset) // g) | (ki < sinks)
            return ok & (ki <= qi) if causal else ok
    else:
        k, dil, causal = pattern[1:]

        def mod(b: Any, h: Any, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
            return axis_window(qi, ki, n, k, dil, causal)

    return torch.compile(create_block_mask, dynamic=False)(mod, None, None, n, n, device=device)


@functools.cache
def _flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _run(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: tuple[Any, ...], scale: float | None
) -> Any:
    import torch._dynamo

    # a new shape recompiles; reaching the limit must raise, never fall back to the eager (dense)
    # block-mask builder or Flex
    with torch._dynamo.config.patch(
        recompile_limit=1024, accumulated_recompile_limit=4096, fail_on_recompile_limit_hit=True
    ):
        mask = _block_mask(pattern, q.shape[-2], str(q.device))
        return _flex()(q, k, v, block_mask=mask, scale=scale)


def _dispatch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: tuple[Any, ...],
    keys: int,
    scale: float | None,
) -> torch.Tensor | None:
    n = q.shape[-2]
    why_not = _eligible(q, k, v)
    if why_not is None:
        ok, why = wins(1, n, keys)
        if ok:
            logger.debug("%s N=%d: compiled FlexAttention forward (%s)", pattern, n, why)
            return _run(q, k, v, pattern, scale)
        why_not = why
    logger.debug("%s N=%d: attnzoo tiled kernel (%s)", pattern, n, why_not)
    return None


def neighborhood(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ks: tuple[int, ...],
    dil: tuple[int, ...],
    causal: tuple[bool, ...],
    scale: float,
) -> torch.Tensor | None:
    """Flex's output of neighbourhood attention on ``q, k, v: (B, h, *S, d)``, or ``None`` where the
    tiled kernel should run (see the module docstring)."""
    if len(ks) != 1:
        logger.debug("na%dd: attnzoo tiled kernel (%d-D: the tiled kernel is faster)", len(ks), len(ks))
        return None
    return _dispatch(q, k, v, ("na", ks[0], dil[0], causal[0]), ks[0], scale)


def band(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, left: int, right: int, scale: float | None
) -> torch.Tensor | None:
    """Flex's output of the sliding window ``i - left <= j <= i + right`` on ``(B, h, N, d)``, or
    ``None`` where attnzoo's blocked kernel should run."""
    return _dispatch(q, k, v, ("band", left, right), left + right + 1, scale)


def groups(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group_size: int,
    offset: int,
    num_sink: int,
    causal: bool,
    scale: float | None,
) -> torch.Tensor | None:
    """Flex's output of :func:`attnzoo.kernels.windowed.grouped_attention` (S2 groups with sinks) on
    ``(B, h, N, d)``, or ``None`` where attnzoo's grouped kernel should run."""
    pattern = ("group", group_size, offset, num_sink, causal)
    return _dispatch(q, k, v, pattern, group_size + num_sink, scale)
