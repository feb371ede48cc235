"""VAR: visual attention redistribution away from attention sinks in large multimodal models.

Kang, Kim, Kim, Hwang, "See What You Are Told: Visual Attention Sink in Large Multimodal Models",
ICLR 2025, arXiv:2503.03321. Official code: seilk/VisAttnSink (``src/logic/logic.py``).

With image tokens ``I = [image_start, image_start + image_len)``, per decoder layer:

1. sink tokens (at prefill, from the layer's input hidden state ``x (T, D)``):
   ``r = x / sqrt(mean(x^2) + eps)`` (RMSNorm without weight), ``phi_j = max_{d in dim_sink} |r[j, d]|``,
   ``S = {j : phi_j > tau}``; the visual sinks are ``V = S ∩ I``. Decode steps reuse the prefill set.
2. image-centric rows (head ``h``, query ``q``) of the post-softmax map ``a``:
   ``portion = sum_{j in V} a_j / sum_{j in I} (a_j + 1e-6) <= rho`` and ``sum_{j in I} a_j >= summ``;
   nothing is selected when ``V`` is empty.
3. redistribution on each selected row whose query comes after the image:
   ``a'_j = p a_j`` for ``j in S`` (visual and text sinks), and the budget
   ``(1 - p) sum_{j in S} a_j`` goes to the image's non-sink tokens in proportion to their
   attention, ``a'_j = a_j + budget * a_j / sum_{k in I \\ V} a_k``. Row sums are preserved.

Every batch element has its own sink set (the official code concatenates the sink positions of
the whole batch and therefore supports batch 1 only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from attnzoo.checks import check_tensor
from attnzoo.inference.hf_edit import ProbEdit, edit_attention, hf_attention_layers

__all__ = [
    "LEDGER",
    "PrefillSinks",
    "VisualAttentionRedistribution",
    "image_centric_rows",
    "redistribute",
    "sink_tokens",
    "var_model",
]

LEDGER = (
    "Batch: the official DimProspector drops the batch axis (torch.nonzero(...)[:, 1]) and pools the "
    "sink positions of all batch elements, so only batch 1 is meaningful; attnzoo keeps one sink set "
    "per batch element.",
    "Query filter: official filters selected rows to q >= image end at prefill only and uses the decode "
    "row as is; attnzoo filters on the query's absolute position (N_k - N_q + i >= image end) in both "
    "cases, which is identical whenever the generated token follows the image.",
    "Last layer: the official except_last_layer switch is shadowed by a class attribute and never "
    "skips the last layer; var_model's default layers 2..L-1 keep that behaviour, pass layers= to change it.",
    "Sink detection is computed in at least float32 (official: always float32).",
    "A selected row with no attention on the image's non-sink tokens: official divides by zero (NaN); "
    "attnzoo raises ValueError.",
    "The official single-layer mode (layer=<int>, one layer's sinks reused everywhere) is expressed by "
    "calling VisualAttentionRedistribution.apply with those sinks; the adapter refuses it.",
)

LLAMA2_7B_SINK_DIMS = (2533, 1415)
"""Massive-activation dimensions of LLaMA-2-7B (LLaVA-1.5-7B's language model), from the paper."""


def _image_span(n_k: int, image_start: int, image_len: int) -> slice:
    if image_start < 0 or image_len < 1 or image_start + image_len > n_k:
        raise ValueError(
            f"image span [image_start={image_start}, +image_len={image_len}) must lie inside the {n_k} keys"
        )
    return slice(image_start, image_start + image_len)


def sink_tokens(
    hidden_states: torch.Tensor, dim_sink: Sequence[int], tau: float = 20.0, *, eps: float = 1e-6
) -> torch.Tensor:
    """Bool ``(B, T)``: tokens whose RMS-normalised hidden state exceeds ``tau`` in a sink dimension.

    Computed in at least float32, as the official code casts to float32.
    """
    x = check_tensor(hidden_states, "hidden_states", ndim=3)
    dims = [int(d) for d in dim_sink]
    if not dims or any(not 0 <= d < x.shape[-1] for d in dims):
        raise ValueError(f"dim_sink {dims} must be non-empty indices into the hidden size {x.shape[-1]}")
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    r = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return r[..., dims].abs().amax(dim=-1) > tau


def _check_sinks(probs: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    if not isinstance(sinks, torch.Tensor) or sinks.dtype != torch.bool or sinks.dim() != 2:
        raise TypeError("sinks must be a bool tensor (B, T) as returned by sink_tokens")
    b, n_k = probs.shape[0], probs.shape[-1]
    if sinks.shape[0] != b or sinks.shape[1] > n_k:
        raise ValueError(f"sinks {tuple(sinks.shape)} does not fit attention probs {tuple(probs.shape)}")
    return torch.nn.functional.pad(sinks, (0, n_k - sinks.shape[1]))


def image_centric_rows(
    probs: torch.Tensor,
    sinks: torch.Tensor,
    image_start: int,
    image_len: int,
    *,
    rho: float = 0.5,
    summ: float = 0.2,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Bool ``(B, h, N_q)``: rows that attend to the image (mass >= ``summ``) mostly outside its
    visual sinks (sink portion <= ``rho``). ``sinks (B, T)`` with ``T <= N_k`` (prefill tokens)."""
    probs = check_tensor(probs, "probs", ndim=4)
    sinks = _check_sinks(probs, sinks)
    span = _image_span(probs.shape[-1], image_start, image_len)
    image = probs[..., span]
    visual = sinks[:, span]
    portion = (image * visual[:, None, None, :]).sum(-1) / (image + eps).sum(-1)
    rows = (portion <= rho) & (image.sum(-1) >= summ)
    return rows & visual.any(-1)[:, None, None]


def redistribute(
    probs: torch.Tensor,
    sinks: torch.Tensor,
    rows: torch.Tensor,
    image_start: int,
    image_len: int,
    *,
    p: float = 0.6,
) -> torch.Tensor:
    """Move ``(1 - p)`` of the sink attention of the selected ``rows`` onto the image's non-sink
    tokens (a new tensor). Only queries after the image are changed (query ``i`` of ``N_q`` sits
    at position ``N_k - N_q + i``)."""
    probs = check_tensor(probs, "probs", ndim=4)
    sinks = _check_sinks(probs, sinks)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    n_q, n_k = probs.shape[-2:]
    span = _image_span(n_k, image_start, image_len)
    if rows.shape != probs.shape[:3]:
        raise ValueError(f"rows must have shape {tuple(probs.shape[:3])}, got {tuple(rows.shape)}")
    position = torch.arange(n_q, device=probs.device) + (n_k - n_q)
    rows = rows & (position >= span.stop)
    sink = sinks[:, None, None, :]
    in_image = torch.zeros(n_k, dtype=torch.bool, device=probs.device)
    in_image[span] = True
    receivers = in_image & ~sink
    budget = (1.0 - p) * (probs * sink).sum(-1, keepdim=True)
    share = probs * receivers
    share_sum = share.sum(-1, keepdim=True)
    if bool((rows & (share_sum[..., 0] <= 0)).any()):
        raise ValueError("a selected row has no attention on the image's non-sink tokens to redistribute to")
    moved = torch.where(sink, p * probs, probs) + budget * share / share_sum.clamp(
        min=torch.finfo(probs.dtype).tiny
    )
    return torch.where(rows[..., None], moved, probs)


class VisualAttentionRedistribution(nn.Module):
    """VAR for one decoder layer (no parameters).

    ``forward(hidden_states (B, T, D), probs (B, h, N_q, N_k), image_start, image_len)`` returns
    ``(sinks (B, T) bool, rows (B, h, N_q) bool, probs' (B, h, N_q, N_k))``; ``hidden_states`` is the
    layer's input at prefill (``T <= N_k``).

    Args:
        dim_sink: the model's massive-activation dimensions (LLaMA-2-7B: 2533, 1415).
        tau: sink threshold on the RMS-normalised activation (20).
        rho: maximal visual-sink portion of an image-centric row (0.5).
        summ: minimal image attention of an image-centric row (0.2).
        p: factor kept on sink attention (0.6).
    """

    def __init__(
        self,
        dim_sink: Sequence[int] = LLAMA2_7B_SINK_DIMS,
        tau: float = 20.0,
        rho: float = 0.5,
        summ: float = 0.2,
        p: float = 0.6,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.dim_sink = tuple(int(d) for d in dim_sink)
        if not self.dim_sink:
            raise ValueError("dim_sink must name at least one hidden dimension")
        self.tau, self.rho, self.summ, self.p = float(tau), float(rho), float(summ), float(p)

    def sinks(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return sink_tokens(hidden_states, self.dim_sink, self.tau)

    def apply(
        self, probs: torch.Tensor, sinks: torch.Tensor, image_start: int, image_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, probs')`` for a known sink set."""
        rows = image_centric_rows(probs, sinks, image_start, image_len, rho=self.rho, summ=self.summ)
        return rows, redistribute(probs, sinks, rows, image_start, image_len, p=self.p)

    def forward(
        self, hidden_states: torch.Tensor, probs: torch.Tensor, image_start: int, image_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sinks = self.sinks(hidden_states)
        rows, out = self.apply(probs, sinks, image_start, image_len)
        return sinks, rows, out

    def extra_repr(self) -> str:
        return f"dim_sink={self.dim_sink}, tau={self.tau}, rho={self.rho}, summ={self.summ}, p={self.p}"


class PrefillSinks:
    """A decoder layer's forward pre-hook (``layer.register_forward_pre_hook(hook, with_kwargs=True)``)
    that detects VAR's sink tokens from the layer's input hidden state ``(B, T, D)`` on the prefill pass
    (the first call, or any call with more than one token) and keeps them for the cached decode steps.

    Args:
        var: the redistribution whose :meth:`~VisualAttentionRedistribution.sinks` detects them.
        on_prefill: called with the new sinks after each detection.

    Attributes:
        sinks: bool ``(B, T)`` of the last prefill; ``None`` before the first call.
    """

    def __init__(
        self,
        var: VisualAttentionRedistribution,
        on_prefill: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        self.var = var
        self.on_prefill = on_prefill
        self.sinks: torch.Tensor | None = None

    def __call__(self, layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.sinks is None or hidden.shape[1] > 1:
            self.sinks = self.var.sinks(hidden)
            if self.on_prefill is not None:
                self.on_prefill(self.sinks)


@contextmanager
def var_model(
    model: nn.Module,
    image_start: int,
    image_len: int,
    *,
    dim_sink: Sequence[int] = LLAMA2_7B_SINK_DIMS,
    tau: float = 20.0,
    rho: float = 0.5,
    summ: float = 0.2,
    p: float = 0.6,
    layers: Sequence[int] | None = None,
) -> Iterator[dict[int, torch.Tensor]]:
    """Run a ``transformers`` decoder (the language model of an LMM) with VAR in ``layers``.

    ``layers`` defaults to 2..L-1 as in the official code (the last layer is included: its
    ``except_last_layer`` switch is shadowed and never takes effect). Sink tokens are detected from
    each layer's input hidden state on the prefill pass (the first call with more than one token,
    or the first call) and reused for the cached decode steps (:class:`PrefillSinks`). Yields
    ``{layer: sinks (B, T)}``, filled as the layers run.
    """
    attn = hf_attention_layers(model)
    chosen = list(range(2, len(attn))) if layers is None else [int(i) for i in layers]
    missing = sorted(set(chosen) - set(attn))
    if missing:
        raise ValueError(f"layers {missing} not in the model (layers 0..{max(attn)})")
    var = VisualAttentionRedistribution(dim_sink, tau, rho, summ, p)
    sinks: dict[int, torch.Tensor] = {}
    owners = {
        id(m.self_attn): m for m in model.modules() if isinstance(getattr(m, "self_attn", None), nn.Module)
    }
    handles = []

    def edit(idx: int) -> ProbEdit:
        return lambda probs, module: var.apply(probs, sinks[idx], image_start, image_len)[1]

    for idx in chosen:
        layer = owners.get(id(attn[idx]))
        if layer is None:
            raise ValueError(f"attention module of layer {idx} has no decoder layer owning it as self_attn")
        hook = PrefillSinks(var, on_prefill=functools.partial(sinks.__setitem__, idx))
        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with edit_attention(model, {attn[i]: edit(i) for i in chosen}):
            yield sinks
    finally:
        for h in handles:
            h.remove()
