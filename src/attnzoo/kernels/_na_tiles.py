"""The tiled neighbourhood-attention kernel of :func:`attnzoo.kernels.neighborhood.neighborhood_attention`.

Queries are cut into tiles of ``t`` positions per axis (all dilation groups laid side by side,
:class:`_AxisPlan`); each tile reads the smallest key/value region holding all its windows (at most
``t + k - 1`` group positions per axis) and attends to it with the window folded into an additive
``-inf`` mask plus the relative bias. A :class:`TilePlan` holds the flat gather indices of every
tile. :class:`_TiledNA` runs the tiles ``chunk`` at a time: per chunk it gathers the queries
``(B h c, t, d)`` and key regions ``(B h c, R, d)``, forms the scores ``(B h c, t, R)`` (a chunk's
scores stay a few MiB, in cache), softmaxes them and multiplies by the values, so the working
memory is the chunk plus the ``(B, h, tiles * t, d_v)`` tile outputs, linear in tokens. Its
backward recomputes each chunk's probabilities (nothing of size ``N x R`` is stored) and
accumulates ``dq, dk, dv`` (and the bias gradient) with ``index_add_``. :func:`tiled_dropout` is
the unchunked autograd form used only for attention dropout while gradients are needed (the
dropout mask must be the one the backward sees).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["CHUNK_ELEMENTS", "TilePlan", "tile_plan", "tiled", "tiled_dropout"]

CHUNK_ELEMENTS = 1 << 22
"""Score entries ``B h c t R`` per chunk (16 MiB of fp32): the chunk's tiles ``c`` follow from it."""


class _AxisPlan(NamedTuple):
    """Tiling of one axis (all dilation groups side by side), in original positions.

    ``queries (nt, t)``: the positions of each query tile (a group's last tile is padded by
    repeating its last query); ``keys (nt, R)``: the key/value region each tile reads; ``mask
    (nt, t, R)``: key in the query's window; ``rel (nt, t, R)``: index into the ``2k - 1`` bias
    entries (clamped where masked); ``tile_of (L,)`` / ``slot_of (L,)``: where each position's
    own query sits in ``queries``.
    """

    queries: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    rel: torch.Tensor
    tile_of: torch.Tensor
    slot_of: torch.Tensor


def _window(m: torch.Tensor, n: int, k: int, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last group position of the window of group positions ``m`` (inclusive)."""
    if causal:
        return (m - (k - 1)).clamp(min=0), m
    lo = (m - k // 2).clamp(0, n - k)
    return lo, lo + (k - 1)


def _axis_plan(length: int, k: int, d: int, causal: bool, tile: int, device: torch.device) -> _AxisPlan:
    """Every dilation group ``r`` is the sub-axis ``r, r + d, ...`` of ``n`` positions; its tiles of
    ``t`` queries read the smallest run of ``R = min(t + k - 1, n_max)`` group positions holding all
    their windows. Slots past a shorter group's end repeat its last key and are masked (windows
    never reach them)."""
    n_min, n_max = length // d, -(-length // d)
    t = min(tile, n_min)
    region = min(t + k - 1, n_max)
    arange_r = torch.arange(region, device=device)
    parts: list[tuple[torch.Tensor, ...]] = []
    tile_of = torch.empty(length, dtype=torch.long, device=device)
    slot_of = torch.empty(length, dtype=torch.long, device=device)
    first_tile = 0
    for r in range(d):
        n = (length - r + d - 1) // d
        nt = -(-n // t)
        m = torch.arange(nt * t, device=device).clamp(max=n - 1).view(nt, t)
        lo, hi = _window(m, n, k, causal)
        start = lo[:, 0].clamp(max=n - region).clamp(min=0)
        g = start[:, None] + arange_r
        mask = (g[:, None, :] >= lo[:, :, None]) & (g[:, None, :] <= hi[:, :, None])
        rel = (g[:, None, :] - m[:, :, None] + (k - 1)).clamp(0, 2 * k - 2)
        parts.append((r + d * m, r + d * g.clamp(max=n - 1), mask, rel))
        own = torch.arange(n, device=device)
        tile_of[r::d] = first_tile + own // t
        slot_of[r::d] = own % t
        first_tile += nt
    queries, keys, mask, rel = (torch.cat(p) for p in zip(*parts, strict=True))
    return _AxisPlan(queries, keys, mask, rel, tile_of, slot_of)


def _outer(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-axis ``(a_i, b_i[, c_i])`` tensors as broadcastable views of ``(a_1.., b_1..[, c_1..])``."""
    nd = len(parts)
    out = []
    for axis, part in enumerate(parts):
        shape = [1] * (part.dim() * nd)
        for level, size in enumerate(part.shape):
            shape[level * nd + axis] = size
        out.append(part.view(shape))
    return out


def _flat_index(parts: list[torch.Tensor], strides: list[int]) -> torch.Tensor:
    """Row-major flat positions of the outer product of per-axis ``(nt, s)`` positions, flattened."""
    views = _outer(parts)
    flat = views[0] * strides[0]
    for view, stride in zip(views[1:], strides[1:], strict=True):
        flat = flat + view * stride
    return flat.reshape(-1)


class TilePlan(NamedTuple):
    """Flat indices of a tiling of ``N`` tokens into ``tiles`` query tiles of ``t`` slots reading
    ``R`` keys each: ``queries (tiles * t,)``, ``keys (tiles * R,)``, ``mask (tiles, t, R)`` bool
    (key in the query's window), ``rel (tiles, t, R)`` flat index into ``rpb[h].reshape(-1)``, and
    ``own (N,)``: each token's slot in the ``tiles * t`` tile layout."""

    queries: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    rel: torch.Tensor
    own: torch.Tensor
    tiles: int
    t: int
    r: int


@functools.lru_cache(maxsize=64)
def tile_plan(
    spatial: tuple[int, ...],
    ks: tuple[int, ...],
    dil: tuple[int, ...],
    causal: tuple[bool, ...],
    tile: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> TilePlan:
    """The :class:`TilePlan` of a neighbourhood on the row-major grid ``spatial``, its mask in
    ``dtype`` (cached: it depends on the shapes only)."""
    plans = [
        _axis_plan(n, kk, dd, c, t, device)
        for n, kk, dd, c, t in zip(spatial, ks, dil, causal, tile, strict=True)
    ]
    strides = [math.prod(spatial[a + 1 :]) for a in range(len(spatial))]
    n_tiles = math.prod(int(p.queries.shape[0]) for p in plans)
    t_len = math.prod(int(p.queries.shape[1]) for p in plans)
    r_len = math.prod(int(p.keys.shape[1]) for p in plans)
    mask = functools.reduce(torch.logical_and, _outer([p.mask for p in plans]))
    rel_strides = [math.prod(2 * kk - 1 for kk in ks[a + 1 :]) for a in range(len(ks))]
    rel = _flat_index([p.rel for p in plans], rel_strides)
    t_sizes = [int(p.queries.shape[1]) for p in plans]
    nt_sizes = [int(p.queries.shape[0]) for p in plans]
    tile_strides = [math.prod(nt_sizes[a + 1 :]) for a in range(len(plans))]
    slot_strides = [math.prod(t_sizes[a + 1 :]) for a in range(len(plans))]
    own = _flat_index([p.tile_of[:, None] for p in plans], tile_strides) * t_len + _flat_index(
        [p.slot_of[:, None] for p in plans], slot_strides
    )
    return TilePlan(
        _flat_index([p.queries for p in plans], strides),
        _flat_index([p.keys for p in plans], strides),
        torch.zeros(mask.shape, dtype=dtype, device=device)
        .masked_fill_(~mask, float("-inf"))
        .reshape(n_tiles, t_len, r_len),
        rel.view(n_tiles, t_len, r_len),
        own,
        n_tiles,
        t_len,
        r_len,
    )


def _additive(plan: TilePlan, rpb: torch.Tensor | None, c0: int, c1: int) -> torch.Tensor:
    """``(1 or h, c, t, R)`` additive mask (``-inf`` outside the windows) plus bias of tiles ``c0:c1``."""
    if rpb is None:
        return plan.mask[c0:c1].unsqueeze(0)
    return plan.mask[c0:c1] + rpb.reshape(rpb.shape[0], -1)[:, plan.rel[c0:c1]]


def _chunk_tiles(plan: TilePlan, bh: int) -> int:
    """Tiles per chunk; all of them while ``torch.export`` / ``torch.compile`` traces, where the batch
    may be symbolic (a chunk size computed from it would specialise the traced program)."""
    if torch.compiler.is_exporting() or torch.compiler.is_compiling():
        return plan.tiles
    return max(1, CHUNK_ELEMENTS // (bh * plan.t * plan.r))


def _chunk_probs(
    q: torch.Tensor, k: torch.Tensor, plan: TilePlan, rpb: torch.Tensor | None, scale: float, c0: int, c1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled queries ``(B h c, t, d)``, keys ``(B h c, R, d)`` and probabilities ``(B h c, t, R)``."""
    b, h, _, d = q.shape
    c = c1 - c0
    qc = q.index_select(2, plan.queries[c0 * plan.t : c1 * plan.t]).mul_(scale).view(b * h * c, plan.t, d)
    kc = k.index_select(2, plan.keys[c0 * plan.r : c1 * plan.r]).view(b * h * c, plan.r, d)
    scores = torch.bmm(qc, kc.transpose(1, 2)).view(b, h, c, plan.t, plan.r)
    scores += _additive(plan, rpb, c0, c1)
    return qc, kc, scores.softmax(dim=-1).view(b * h * c, plan.t, plan.r)


class _TiledNA(torch.autograd.Function):
    """Chunked tiled NA on flat ``q, k: (B, h, N, d)``, ``v: (B, h, N, d_v)``; returns the tile
    layout ``(B, h, tiles * t, d_v)`` (gathered to token order by the caller)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rpb: torch.Tensor | None,
        plan: TilePlan,
        scale: float,
    ) -> torch.Tensor:
        b, h, _, dv = v.shape
        out = q.new_empty(b, h, plan.tiles * plan.t, dv)
        step = _chunk_tiles(plan, b * h)
        for c0 in range(0, plan.tiles, step):
            c1 = min(plan.tiles, c0 + step)
            _, _, probs = _chunk_probs(q, k, plan, rpb, scale, c0, c1)
            vc = v.index_select(2, plan.keys[c0 * plan.r : c1 * plan.r]).view(-1, plan.r, dv)
            out[:, :, c0 * plan.t : c1 * plan.t] = torch.bmm(probs, vc).view(b, h, -1, dv)
        ctx.save_for_backward(q, k, v, rpb, out)
        ctx.plan, ctx.scale = plan, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_tiles: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        q, k, v, rpb, out = ctx.saved_tensors
        plan: TilePlan = ctx.plan
        b, h, _, d = q.shape
        dv = v.shape[-1]
        dq, dk, dvv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        drpb = (
            None if rpb is None else torch.zeros(rpb.shape[0], rpb[0].numel(), dtype=q.dtype, device=q.device)
        )
        # the padded duplicate slots carry no gradient (their outputs are not gathered)
        delta = (grad_tiles * out).sum(-1)
        step = _chunk_tiles(plan, b * h)
        for c0 in range(0, plan.tiles, step):
            c1 = min(plan.tiles, c0 + step)
            qc, kc, probs = _chunk_probs(q, k, plan, rpb, ctx.scale, c0, c1)
            rows = slice(c0 * plan.t, c1 * plan.t)
            keys = plan.keys[c0 * plan.r : c1 * plan.r]
            vc = v.index_select(2, keys).view(-1, plan.r, dv)
            go = grad_tiles[:, :, rows].reshape(-1, plan.t, dv)
            dvv.index_add_(2, keys, torch.bmm(probs.transpose(1, 2), go).view(b, h, -1, dv))
            ds = torch.bmm(go, vc.transpose(1, 2))
            ds -= delta[:, :, rows].reshape(-1, plan.t, 1)
            ds *= probs
            dq.index_add_(2, plan.queries[rows], torch.bmm(ds, kc).mul_(ctx.scale).view(b, h, -1, d))
            dk.index_add_(2, keys, torch.bmm(ds.transpose(1, 2), qc).view(b, h, -1, d))
            if drpb is not None:
                drpb.index_add_(1, plan.rel[c0:c1].reshape(-1), ds.view(b, h, -1).sum(0))
        return dq, dk, dvv, None if drpb is None else drpb.view_as(rpb), None, None


def tiled(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor | None, plan: TilePlan, scale: float
) -> torch.Tensor:
    """Tiled NA of flat ``q, k: (B, h, N, d)``, ``v: (B, h, N, d_v)`` -> ``(B, h, N, d_v)``."""
    return _TiledNA.apply(q, k, v, rpb, plan, scale).index_select(2, plan.own)


def tiled_dropout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor | None,
    plan: TilePlan,
    scale: float,
    dropout_p: float,
) -> torch.Tensor:
    """:func:`tiled` with dropout on the probabilities, all tiles at once through autograd."""
    b, h, _, d = q.shape
    dv = v.shape[-1]
    qt = q.index_select(2, plan.queries).view(b, h * plan.tiles, plan.t, d)
    kt = k.index_select(2, plan.keys).view(b, h * plan.tiles, plan.r, d)
    vt = v.index_select(2, plan.keys).view(b, h * plan.tiles, plan.r, dv)
    scores = ((qt * scale) @ kt.transpose(-1, -2)).view(b, h, plan.tiles, plan.t, plan.r)
    probs = (scores + _additive(plan, rpb, 0, plan.tiles)).softmax(dim=-1)
    probs = F.dropout(probs.view(b, h * plan.tiles, plan.t, plan.r), dropout_p)
    return (probs @ vt).view(b, h, -1, dv).index_select(2, plan.own)
