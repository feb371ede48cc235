"""The shapes of the sparse-attention benchmark (:mod:`attnzoo.bench.sparse_suite`) and, for each
sparse softmax kernel, its attention pattern as one predicate shared by every contender.

A :class:`Case` is one kernel at one shape. For each case this module gives

* the attnzoo call (:func:`attnzoo.kernels.neighborhood.na1d` / ``na2d`` / ``na3d``,
  :func:`attnzoo.kernels.windowed.sliding_window_attention`,
  :func:`attnzoo.kernels.windowed.grouped_attention` (S2 groups),
  :func:`attnzoo.kernels.grouped.segment_attention` (region attention) and
  :func:`attnzoo.kernels.grouped.routed_region_attention` (bi-level routing));
* :func:`mask_mod`, the pattern as ``(b, h, q_idx, kv_idx) -> bool`` over flattened token indices
  (row-major grids; region-major tokens for bi-level routing). FlexAttention builds its block mask
  from it and the dense SDPA contender evaluates it into an ``N x N`` mask
  (:func:`dense_mask`), so the baselines compute exactly the attnzoo kernel's function;
* :func:`pairs`, the number of (query, key) pairs the pattern keeps (``N k`` for non-causal
  neighbourhoods, ``k`` the product of the window sizes), from which the useful FLOPs are counted.

Tensors are ``(B, h, N, d)`` (heads first, tokens flattened) unless a kernel says otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from attnzoo.kernels.flex_dispatch import axis_window
from attnzoo.kernels.grouped import routed_region_attention, segment_attention
from attnzoo.kernels.neighborhood import na1d, na2d, na3d
from attnzoo.kernels.windowed import grouped_attention, sliding_window_attention

__all__ = [
    "KERNELS",
    "NA_KERNELS",
    "PRESETS",
    "Case",
    "KernelCall",
    "Skip",
    "attnzoo_call",
    "block_mask",
    "dense_mask",
    "flex_call",
    "make_inputs",
    "mask_mod",
    "natten_call",
    "pairs",
]

NA_KERNELS = ("na1d", "na2d", "na3d")
KERNELS = (*NA_KERNELS, "sliding_window", "s2_groups", "region", "bilevel_routing")
MaskMod = Callable[[Any, Any, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Case:
    """One kernel at one shape.

    Attributes:
        kernel: one of :data:`KERNELS`.
        size: spatial size (``(N,)``, ``(H, W)`` or ``(D, H, W)``).
        params: the kernel's options as ``(name, value)`` pairs: ``kernel_size``, ``dilation``,
            ``causal`` (neighbourhoods); ``left``, ``right`` (sliding window); ``group_size``,
            ``offset``, ``num_sink``, ``causal`` (S2 groups); ``regions`` (region attention: Voronoi
            cells of that many seeds); ``n_win``, ``topk`` (bi-level routing: ``n_win^2`` regions).
    """

    kernel: str
    size: tuple[int, ...]
    params: tuple[tuple[str, Any], ...]

    @property
    def kw(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def n(self) -> int:
        return math.prod(self.size)

    @property
    def series(self) -> str:
        """The case's kernel and options without its size: cases of one series differ only in N."""
        return self.kernel + "".join(f" {k}={v}" for k, v in self.params)

    @property
    def label(self) -> str:
        return "x".join(str(s) for s in self.size) + "".join(f" {k}={v}" for k, v in self.params)

    def header(self) -> dict[str, Any]:
        """The case's identity as a result row's leading fields."""
        return {
            "kernel": self.kernel,
            "size": list(self.size),
            "n": self.n,
            "params": self.kw,
            "series": self.series,
            "label": self.label,
        }


class Skip(Exception):
    """A contender does not run at a case; the message is the recorded reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _na(size: tuple[int, ...], k: int, dilation: int = 1, causal: bool = False) -> Case:
    params = (("kernel_size", k), ("dilation", dilation), ("causal", causal))
    return Case(f"na{len(size)}d", size, params)


def _sw(n: int, left: int, right: int) -> Case:
    return Case("sliding_window", (n,), (("left", left), ("right", right)))


def _s2(n: int, group: int, offset: int = 0, sinks: int = 0, causal: bool = False) -> Case:
    params = (("group_size", group), ("offset", offset), ("num_sink", sinks), ("causal", causal))
    return Case("s2_groups", (n,), params)


def _region(side: int, regions: int) -> Case:
    return Case("region", (side, side), (("regions", regions),))


def _bra(side: int, n_win: int, topk: int) -> Case:
    return Case("bilevel_routing", (side, side), (("n_win", n_win), ("topk", topk)))


PRESETS: dict[str, tuple[Case, ...]] = {
    "full": (
        *(_na((n,), 127) for n in (1024, 4096, 16384, 32768)),
        *(_na((4096,), k) for k in (7, 31, 511, 1023)),
        _na((4096,), 31, dilation=8),
        _na((4096,), 127, causal=True),
        *(_sw(n, 63, 63) for n in (1024, 8192, 32768)),
        _sw(8192, 127, 0),
        *(_na((s, s), 7) for s in (14, 28, 56, 128)),
        _na((56, 56), 3),
        _na((56, 56), 13),
        _na((56, 56), 7, dilation=2),
        _na((56, 56), 7, causal=True),
        *(_na((s, s, s), 3) for s in (8, 16)),
        _na((16, 16, 16), 5),
        _region(56, 64),
        _bra(56, 7, 4),
        _s2(8192, 1024),
        _s2(8192, 1024, offset=512, sinks=4, causal=True),
        _na((32768,), 1023),
    ),
    "quick": (
        _na((2048,), 31),
        _na((28, 28), 7),
        _na((8, 8, 8), 3),
        _bra(28, 7, 4),
    ),
    "tiny": (
        _na((40,), 7),
        _na((40,), 5, dilation=3, causal=True),
        _sw(40, 5, 3),
        _sw(40, 6, 0),
        _na((7, 9), 3),
        _na((8, 8), 3, dilation=2, causal=True),
        _na((5, 4, 6), 3),
        _s2(40, 16, offset=8, sinks=2, causal=True),
        _region(8, 5),
        _bra(8, 2, 2),
    ),
}
"""Cases per preset: ``full`` (the committed report), ``quick`` (about a minute), ``tiny`` (tests).
A series runs in increasing N, so that a contender over its cap is skipped at the larger N; the
most expensive shape comes last, where a time budget that runs out drops it first."""


def _voronoi(size: tuple[int, int], regions: int) -> torch.Tensor:
    """``(H*W,)`` int64 labels: each pixel's nearest of ``regions`` fixed random seed points, so the
    regions are irregular and unequal like segmentation regions."""
    g = torch.Generator().manual_seed(0)
    seeds = torch.rand(regions, 2, generator=g) * torch.tensor(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    pix = torch.stack([ys, xs], -1).reshape(-1, 2).float() + 0.5
    return torch.cdist(pix, seeds).argmin(-1)


def _routes(q: torch.Tensor, k: torch.Tensor, topk: int) -> torch.Tensor:
    """BiFormer's routing: ``(B, R, T, h, d)`` queries/keys -> ``(B, R, topk)`` key regions of the
    highest region-mean affinity."""
    qr, kr = q.mean(dim=(2, 3)), k.mean(dim=(2, 3))
    return (qr @ kr.transpose(-1, -2)).topk(topk, dim=-1).indices


def make_inputs(case: Case, *, heads: int, dim: int, seed: int = 0) -> dict[str, Any]:
    """``q, k, v: (1, heads, N, dim)`` fp32 plus what the pattern needs: ``segments: (N,)`` labels
    (region), ``routes: (1, R, topk)`` and ``allowed: (R, R)`` bool (bi-level routing)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, case.n, dim, generator=g) for _ in range(3))
    out: dict[str, Any] = {"q": q, "k": k, "v": v}
    kw = case.kw
    if case.kernel == "region":
        out["segments"] = _voronoi(case.size, kw["regions"])  # type: ignore[arg-type]
    elif case.kernel == "bilevel_routing":
        r = kw["n_win"] ** 2
        t = case.n // r
        routes = _routes(*(_regions(x, r, t) for x in (q, k)), kw["topk"])
        allowed = torch.zeros(r, r, dtype=torch.bool)
        allowed[torch.arange(r)[:, None], routes[0]] = True
        out.update(routes=routes, allowed=allowed, tokens_per_region=t)
    return out


def _regions(x: torch.Tensor, r: int, t: int) -> torch.Tensor:
    """``(1, h, R*T, d)`` region-major tokens -> ``(1, R, T, h, d)``."""
    return x.view(1, x.shape[1], r, t, x.shape[-1]).permute(0, 2, 3, 1, 4).contiguous()


class KernelCall(NamedTuple):
    """``fn(*tensors)`` runs a kernel on its own layout (prepared outside any timing);
    ``to_flat(out)`` turns its output into ``(1, h, N, d)``."""

    fn: Callable[..., torch.Tensor]
    tensors: tuple[torch.Tensor, ...]
    to_flat: Callable[[torch.Tensor], torch.Tensor] = lambda o: o


def attnzoo_call(case: Case, inputs: dict[str, Any]) -> KernelCall:
    """The attnzoo kernel of ``case`` on ``inputs`` (:func:`make_inputs`)."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    b, h, n, d = q.shape
    kw = case.kw
    if case.kernel in NA_KERNELS:
        grid = (b, h, *case.size, d)
        call = {"na1d": na1d, "na2d": na2d, "na3d": na3d}[case.kernel]
        na_kw = {"kernel_size": kw["kernel_size"], "dilation": kw["dilation"], "is_causal": kw["causal"]}
        return KernelCall(
            lambda q_, k_, v_: call(q_, k_, v_, **na_kw),
            (q.view(grid), k.view(grid), v.view(grid)),
            lambda o: o.reshape(b, h, n, d),
        )
    if case.kernel == "sliding_window":
        return KernelCall(lambda q_, k_, v_: sliding_window_attention(q_, k_, v_, **kw), (q, k, v))
    if case.kernel == "s2_groups":
        return KernelCall(lambda q_, k_, v_: grouped_attention(q_, k_, v_, **kw), (q, k, v))
    if case.kernel == "region":
        seg = inputs["segments"].view(1, n)
        return KernelCall(lambda q_, k_, v_: segment_attention(q_, k_, v_, seg), (q, k, v))
    r, t = kw["n_win"] ** 2, inputs["tokens_per_region"]
    routes = inputs["routes"]
    return KernelCall(
        lambda q_, k_, v_: routed_region_attention(q_, k_, v_, routes),
        tuple(_regions(x, r, t) for x in (q, k, v)),
        lambda o: o.permute(0, 3, 1, 2, 4).reshape(b, h, n, d),
    )


def natten_call(case: Case, inputs: dict[str, Any]) -> KernelCall:
    """NATTEN's kernel of ``case`` (heads-last layout); raises :class:`Skip` without one."""
    if importlib.util.find_spec("natten") is None:
        raise Skip("unavailable", "natten is not installed")
    import natten

    kw = case.kw
    if case.kernel in NA_KERNELS:
        fn = getattr(natten, case.kernel)
        opts = {"kernel_size": kw["kernel_size"], "dilation": kw["dilation"], "is_causal": kw["causal"]}
        size = case.size
    elif case.kernel == "sliding_window" and kw["right"] == 0:
        fn, opts, size = natten.na1d, {"kernel_size": kw["left"] + 1, "is_causal": True}, case.size
    else:
        raise Skip("n/a", "NATTEN has no kernel for this pattern")
    b, h, n, d = inputs["q"].shape
    heads_last = tuple(x.view(b, h, *size, d).movedim(1, -2).contiguous() for x in (inputs[c] for c in "qkv"))
    return KernelCall(
        lambda q, k, v: fn(q, k, v, **opts), heads_last, lambda o: o.movedim(-2, 1).reshape(b, h, n, d)
    )


EAGER_BLOCK_MASK_MAX_N = 4096
"""Above this N the block mask is built by a compiled ``create_block_mask``: the eager builder
evaluates the full ``N x N`` mask (about 11 GB at N = 32K)."""


@functools.cache
def _flex_fn(compiled: bool) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


@functools.cache
def _block_mask_builder(compiled: bool) -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask, dynamic=False) if compiled else create_block_mask


def block_mask(mod: MaskMod, n: int, device: str) -> Any:
    """FlexAttention's ``BlockMask`` of ``mod`` over ``N`` queries and keys (batch and heads broadcast)."""
    return _block_mask_builder(n > EAGER_BLOCK_MASK_MAX_N)(mod, None, None, n, n, device=device)


def flex_call(qkv: tuple[torch.Tensor, ...], mask: Any, *, compiled: bool) -> KernelCall:
    """``flex_attention`` (``torch.compile``-d with static shapes when ``compiled``) on ``(1, h, N, d)``
    tensors with the block mask ``mask``."""
    flex = _flex_fn(compiled)
    return KernelCall(lambda q, k, v: flex(q, k, v, block_mask=mask), qkv)


def _coords(idx: torch.Tensor, size: tuple[int, ...]) -> list[torch.Tensor]:
    out = []
    for s in reversed(size):
        out.append(idx % s)
        idx = idx // s
    return out[::-1]


def mask_mod(case: Case, inputs: dict[str, Any]) -> MaskMod:
    """The case's pattern as a FlexAttention ``mask_mod`` (True = query may attend to key); it also
    broadcasts over index tensors, which :func:`dense_mask` uses."""
    kw = case.kw
    if case.kernel in NA_KERNELS:
        ks, dil, causal = kw["kernel_size"], kw["dilation"], kw["causal"]

        def na(b: Any, h: Any, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
            hits = [
                axis_window(qc, kc, length, ks, dil, causal)
                for qc, kc, length in zip(_coords(qi, case.size), _coords(ki, case.size), case.size)
            ]
            return functools.reduce(operator.and_, hits)

        return na
    if case.kernel == "sliding_window":
        left, right = kw["left"], kw["right"]
        return lambda b, h, qi, ki: (ki >= qi - left) & (ki <= qi + right)
    if case.kernel == "s2_groups":
        g, offset, sinks, causal = kw["group_size"], kw["offset"], kw["num_sink"], kw["causal"]

        def s2(b: Any, h: Any, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
            ok = ((qi + offset) // g == (ki + offset) // g) | (ki < sinks)
            return ok & (ki <= qi) if causal else ok

        return s2
    if case.kernel == "region":
        seg = inputs["segments"]
        return lambda b, h, qi, ki: seg[qi] == seg[ki]
    allowed, t = inputs["allowed"], inputs["tokens_per_region"]
    return lambda b, h, qi, ki: allowed[qi // t, ki // t]


def _row_chunks(mod: MaskMod, n: int, entries: int = 1 << 22) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first row, rows x N bool)`` chunks of ``mod``'s mask of about ``entries`` entries each, so
    that the index arithmetic never holds more than a chunk's int64 temporaries."""
    step = max(1, entries // n)
    keys = torch.arange(n)[None, :]
    for start in range(0, n, step):
        yield start, mod(0, 0, torch.arange(start, min(n, start + step))[:, None], keys)


def dense_mask(mod: MaskMod, n: int) -> torch.Tensor:
    """``(N, N)`` bool mask of ``mod`` (True = may attend)."""
    out = torch.empty(n, n, dtype=torch.bool)
    for start, rows in _row_chunks(mod, n):
        out[start : start + rows.shape[0]] = rows
    return out


def _axis_pairs(length: int, k: int, dil: int, causal: bool) -> int:
    """Sum over the positions of one axis of its window length."""
    total = 0
    for r in range(dil):
        n = len(range(r, length, dil))
        total += sum(min(m + 1, k) for m in range(n)) if causal else n * k
    return total


def pairs(case: Case, inputs: dict[str, Any]) -> int:
    """Number of (query, key) pairs of the pattern: the neighbourhood is a product of per-axis
    windows, so its count is the product of the per-axis sums."""
    kw = case.kw
    n = case.n
    if case.kernel in NA_KERNELS:
        return math.prod(_axis_pairs(s, kw["kernel_size"], kw["dilation"], kw["causal"]) for s in case.size)
    if case.kernel == "sliding_window":
        left, right = min(kw["left"], n - 1), min(kw["right"], n - 1)
        return n * (left + right + 1) - left * (left + 1) // 2 - right * (right + 1) // 2
    if case.kernel == "region":
        return int((torch.bincount(inputs["segments"]) ** 2).sum())
    if case.kernel == "bilevel_routing":
        return int(inputs["allowed"].sum()) * inputs["tokens_per_region"] ** 2
    return sum(int(rows.sum()) for _, rows in _row_chunks(mask_mod(case, inputs), n))
