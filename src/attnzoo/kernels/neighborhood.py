"""Neighborhood attention (NA) in 1-D, 2-D and 3-D: softmax attention restricted to a sliding window.

Hassani et al., "Neighborhood Attention Transformer" (arXiv 2204.07143), with dilation from
"Dilated Neighborhood Attention Transformer" (arXiv 2209.15001) and the causal / fused view of
"Faster Neighborhood Attention" (arXiv 2403.04690). Per batch, head and query position ``i``::

    O_i = sum_{j in rho(i)} softmax_j(scale * q_i . k_j + B[h, j - i]) v_j

where ``rho(i)`` is the neighbourhood of ``i``, built axis by axis (NATTEN's definition):

* dilation ``d`` splits an axis of length ``L`` into ``d`` interleaved groups (positions with the
  same ``i mod d``); ``i`` only sees keys of its own group, whose length is ``n = len(range(r, L, d))``;
* inside the group, with ``m = i // d``, the window is ``k`` consecutive group positions
  ``[s, s + k)`` with ``s = clamp(m - k // 2, 0, n - k)``: near a border the window is shifted
  inside, never zero-padded, so every query sees exactly ``k`` keys per axis;
* causal axes use ``[max(0, m - k + 1), m]`` instead (fewer keys at the start, never future ones);
* the relative position bias ``rpb`` has ``2k - 1`` entries per axis, indexed by the offset
  ``(j - i) / d + k - 1`` (the layout of NAT/DiNAT and NATTEN <= 0.17).

Tensors are heads-first like :mod:`attnzoo.kernels.attention`: ``q, k, v: (B, h, L, d)`` for 1-D,
``(B, h, H, W, d)`` for 2-D and ``(B, h, D, H, W, d)`` for 3-D; ``rpb: (h, 2k-1)``, ``(h, 2k_H-1,
2k_W-1)`` or ``(h, 2k_D-1, 2k_H-1, 2k_W-1)``.

:func:`neighborhood_attention` (and :func:`na1d` / :func:`na2d` / :func:`na3d`) is the fast path:
queries are cut into tiles, each tile reads the smallest key/value region that holds all its
windows (at most ``tile + k - 1`` per axis) and attends to it with the window folded into an
additive ``-inf`` mask plus the relative bias (the conventions of
:func:`attnzoo.kernels.attention.attention_reference`: scale ``d ** -0.5`` by default, True = may
attend); the tiles of all dilation groups are laid side by side, so one batched product covers
every group. The tiles run a chunk at a time with a recomputing backward
(:mod:`attnzoo.kernels._na_tiles`), so no ``N x N`` and no ``N x region`` tensor is formed and the
working memory grows linearly with tokens. 1-D calls that need no gradient, without bias or dropout
and with the default tile, may run on compiled FlexAttention where it is faster
(:mod:`attnzoo.kernels.flex_dispatch`, which logs the path and the reason at debug level).
:func:`neighborhood_attention_reference` is the naive form that gathers every query's neighbours
from an explicit index (``(B, h, N, K, d)``); while :class:`attnzoo.capture.capture` is active the
fast path defers to it and it records the ``(B, h, N, N)`` probabilities (zero outside the windows)
with ``kind="neighborhood"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from attnzoo.capture import capturing, record
from attnzoo.kernels import flex_dispatch
from attnzoo.kernels._na_tiles import tile_plan, tiled, tiled_dropout

__all__ = [
    "default_tile",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention",
    "neighborhood_attention_reference",
    "neighborhood_indices",
    "neighborhood_mask",
]

DEFAULT_TILE = {1: (64,), 2: (4, 8), 3: (4, 4, 4)}
"""Query tile per axis by number of spatial axes; 1-D windows of ``k >= 128`` take 128."""


def default_tile(ks: tuple[int, ...]) -> tuple[int, ...]:
    """The query tile of :func:`neighborhood_attention` for windows ``ks`` (one per axis)."""
    if len(ks) == 1 and ks[0] >= 128:
        return (128,)
    return DEFAULT_TILE[len(ks)]


def _per_axis(value: int | bool | Sequence[int] | Sequence[bool], nd: int, name: str) -> tuple:
    if isinstance(value, (int, bool)):
        return (value,) * nd
    if isinstance(value, Sequence) and len(value) == nd and all(isinstance(v, (int, bool)) for v in value):
        return tuple(value)
    raise TypeError(f"{name} must be an int/bool or a sequence of {nd}, got {value!r}")


def _window_args(
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int],
    is_causal: bool | Sequence[bool],
    nd: int,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
    """``kernel_size``, ``dilation`` and ``is_causal`` as one entry per spatial axis."""
    ks = _per_axis(kernel_size, nd, "kernel_size")
    dil = _per_axis(dilation, nd, "dilation")
    causal = tuple(bool(c) for c in _per_axis(is_causal, nd, "is_causal"))
    return ks, dil, causal


def _check_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int],
    is_causal: bool | Sequence[bool],
    rpb: torch.Tensor | None,
    scale: float | None,
) -> tuple[int, tuple[int, ...], tuple[int, ...], tuple[bool, ...], float]:
    """Validate the arguments; returns ``(nd, kernel_size, dilation, is_causal, scale)`` per axis."""
    if not isinstance(q, torch.Tensor) or not 4 <= q.dim() <= 6:
        raise ValueError(f"q must be a tensor (B, h, *spatial, d) with 1-3 spatial axes, got {q!r:.80}")
    nd = q.dim() - 3
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != nd + 3:
            raise ValueError(f"{name} must have shape (B, h, *spatial[{nd}], d), got {tuple(t.shape)}")
    if k.shape[:-1] != q.shape[:-1] or v.shape[:-1] != q.shape[:-1] or k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"q, k, v must agree on (B, h, *spatial) and q, k on d; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    ks, dil, causal = _window_args(kernel_size, dilation, is_causal, nd)
    spatial = tuple(q.shape[2:-1])
    for axis, (length, kk, dd) in enumerate(zip(spatial, ks, dil, strict=True)):
        if isinstance(kk, bool) or kk < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size!r}")
        if isinstance(dd, bool) or dd < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation!r}")
        if kk * dd > length:
            raise ValueError(
                f"kernel_size * dilation = {kk} * {dd} exceeds the input size {length} on spatial axis "
                f"{axis}; every query needs kernel_size neighbours"
            )
    if rpb is not None:
        if not isinstance(rpb, torch.Tensor):
            raise TypeError(f"rpb must be a torch.Tensor or None, got {type(rpb).__name__}")
        want = (q.shape[1], *(2 * kk - 1 for kk in ks))
        if tuple(rpb.shape) != want:
            raise ValueError(f"rpb must have shape (h, 2k-1, ...) = {want}, got {tuple(rpb.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return nd, ks, dil, causal, scale


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    rpb: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    tile_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Neighborhood attention over ``D = q.dim() - 3`` spatial axes (see the module docstring).

    Args:
        q, k, v: ``(B, h, *S, d)``, ``(B, h, *S, d)``, ``(B, h, *S, d_v)``.
        kernel_size: window size per axis (int or one per axis); ``kernel_size * dilation``
            must not exceed the axis length.
        dilation: dilation per axis.
        is_causal: causal masking per axis.
        rpb: relative position bias ``(h, 2k_1 - 1, .., 2k_D - 1)``, or ``None``.
        scale: score scale; ``d ** -0.5`` when ``None``.
        dropout_p: dropout on the attention probabilities (apply only in training).
        tile_size: query tile per axis (performance only; the result does not depend on it);
            default :func:`default_tile`. Given explicitly, the tiled kernel runs (never Flex).

    Returns:
        ``(B, h, *S, d_v)``.
    """
    nd, ks, dil, causal, scale = _check_args(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
    if capturing():
        return neighborhood_attention_reference(
            q, k, v, ks, dil, causal, rpb, scale=scale, dropout_p=dropout_p, record_kind="neighborhood"
        )
    tile = default_tile(ks) if tile_size is None else _per_axis(tile_size, nd, "tile_size")
    if any(isinstance(t, bool) or t < 1 for t in tile):
        raise ValueError(f"tile_size must be positive, got {tile_size!r}")
    spatial = tuple(q.shape[2:-1])
    if tile_size is None and rpb is None and not dropout_p:
        out = flex_dispatch.neighborhood(q, k, v, ks, dil, causal, scale)
        if out is not None:
            return out
    b, h, dv = q.shape[0], q.shape[1], v.shape[-1]
    flat = [x.reshape(b, h, math.prod(spatial), x.shape[-1]) for x in (q, k, v)]
    plan = tile_plan(spatial, ks, dil, causal, tile, q.device, q.dtype)
    if rpb is not None:
        rpb = rpb.to(q.dtype)
    out = tiled_dropout(*flat, rpb, plan, scale, dropout_p) if dropout_p else tiled(*flat, rpb, plan, scale)
    return out.view(b, h, *spatial, dv)


def na1d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    is_causal: bool = False,
    rpb: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    tile_size: int | None = None,
) -> torch.Tensor:
    """1-D neighborhood attention on ``(B, h, L, d)``; ``rpb: (h, 2k - 1)``."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must have shape (B, h, L, d), got {getattr(q, 'shape', q)!r}")
    return neighborhood_attention(
        q, k, v, kernel_size, dilation, is_causal, rpb, scale=scale, dropout_p=dropout_p, tile_size=tile_size
    )


def na2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    rpb: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    tile_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """2-D neighborhood attention on ``(B, h, H, W, d)``; ``rpb: (h, 2k_H - 1, 2k_W - 1)``."""
    if not isinstance(q, torch.Tensor) or q.dim() != 5:
        raise ValueError(f"q must have shape (B, h, H, W, d), got {getattr(q, 'shape', q)!r}")
    return neighborhood_attention(
        q, k, v, kernel_size, dilation, is_causal, rpb, scale=scale, dropout_p=dropout_p, tile_size=tile_size
    )


def na3d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    rpb: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    tile_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """3-D neighborhood attention on ``(B, h, D, H, W, d)``; ``rpb: (h, 2k_D - 1, 2k_H - 1, 2k_W - 1)``."""
    if not isinstance(q, torch.Tensor) or q.dim() != 6:
        raise ValueError(f"q must have shape (B, h, D, H, W, d), got {getattr(q, 'shape', q)!r}")
    return neighborhood_attention(
        q, k, v, kernel_size, dilation, is_causal, rpb, scale=scale, dropout_p=dropout_p, tile_size=tile_size
    )


def neighborhood_indices(
    length: int, kernel_size: int, dilation: int = 1, is_causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit neighbours of every position of one axis, built position by position.

    Returns ``(index (L, k), valid (L, k))``: ``index[i, t]`` is the ``t``-th neighbour of ``i``
    (a causal window near the start has fewer than ``k`` neighbours; the missing slots point at
    ``i`` and are ``valid == False``).
    """
    if kernel_size < 1 or dilation < 1 or kernel_size * dilation > length:
        raise ValueError(
            f"need kernel_size >= 1, dilation >= 1 and kernel_size * dilation <= length, got "
            f"kernel_size={kernel_size}, dilation={dilation}, length={length}"
        )
    index = [[0] * kernel_size for _ in range(length)]
    valid = [[False] * kernel_size for _ in range(length)]
    for i in range(length):
        group = list(range(i % dilation, length, dilation))
        m, n = i // dilation, len(group)
        if is_causal:
            window = [m - kernel_size + 1 + t for t in range(kernel_size)]
        else:
            start = min(max(m - kernel_size // 2, 0), n - kernel_size)
            window = [start + t for t in range(kernel_size)]
        for t, g in enumerate(window):
            index[i][t] = group[g] if g >= 0 else i
            valid[i][t] = g >= 0
    return torch.tensor(index, dtype=torch.long), torch.tensor(valid, dtype=torch.bool)


def _flat_neighbourhoods(
    spatial: tuple[int, ...], ks: tuple[int, ...], dil: tuple[int, ...], causal: tuple[bool, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat key index ``(N, K)``, validity ``(N, K)`` and per-axis relative offsets ``(D, N, K)``."""
    per_axis = [
        neighborhood_indices(n, kk, dd, c) for n, kk, dd, c in zip(spatial, ks, dil, causal, strict=True)
    ]
    nd = len(spatial)
    index = torch.zeros((), dtype=torch.long)
    valid = torch.ones((), dtype=torch.bool)
    rels = []
    for a, ((idx, ok), n, kk, dd) in enumerate(zip(per_axis, spatial, ks, dil, strict=True)):
        shape = [1] * (2 * nd)
        shape[a], shape[nd + a] = n, kk
        idx, ok = idx.view(shape), ok.view(shape)
        pos = torch.arange(n).view([n if x == a else 1 for x in range(2 * nd)])
        index = index * n + idx
        valid = valid & ok
        rels.append((idx - pos) // dd + kk - 1)
    full = (*spatial, *ks)
    n_tok, n_nb = math.prod(spatial), math.prod(ks)
    rel = torch.stack([r.expand(full).reshape(n_tok, n_nb) for r in rels])
    return index.expand(full).reshape(n_tok, n_nb), valid.expand(full).reshape(n_tok, n_nb), rel


def neighborhood_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    rpb: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    record_kind: str | None = None,
) -> torch.Tensor:
    """Naive NA: gathers every query's ``K = prod(k)`` neighbours from an explicit index.

    Materialises ``(B, h, N, K, d)`` keys/values and ``(B, h, N, K)`` scores; the oracle of the
    tiled path. With ``record_kind`` it reports the ``(B, h, N, N)`` probabilities to
    :func:`attnzoo.capture.record` (the capture path of :func:`neighborhood_attention`).
    """
    _, ks, dil, causal, scale = _check_args(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
    spatial = tuple(q.shape[2:-1])
    b, h, d = q.shape[0], q.shape[1], q.shape[-1]
    n_tok = math.prod(spatial)
    index, valid, rel = _flat_neighbourhoods(spatial, ks, dil, causal)
    index, valid, rel = index.to(q.device), valid.to(q.device), rel.to(q.device)
    qf = q.reshape(b, h, n_tok, d)
    kn = k.reshape(b, h, n_tok, d)[:, :, index]
    vn = v.reshape(b, h, n_tok, v.shape[-1])[:, :, index]
    scores = ((qf * scale).unsqueeze(-2) @ kn.transpose(-1, -2)).squeeze(-2)
    if rpb is not None:
        scores = scores + rpb.to(q.dtype)[(slice(None), *rel.unbind(0))]
    scores = scores.masked_fill(~valid, float("-inf"))
    probs = scores.softmax(dim=-1)
    if record_kind is not None:
        rows = torch.arange(n_tok, device=q.device)[:, None].expand_as(index)[valid]
        cols = index[valid]
        dense = probs.new_zeros(b, h, n_tok, n_tok)
        dense[:, :, rows, cols] = probs[:, :, valid]
        dense_scores = scores.new_full((b, h, n_tok, n_tok), float("-inf"))
        dense_scores[:, :, rows, cols] = scores[:, :, valid]
        record(dense, dense_scores, kind=record_kind)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    out = (probs.unsqueeze(-2) @ vn).squeeze(-2)
    return out.reshape(b, h, *spatial, v.shape[-1])


def neighborhood_mask(
    size: Sequence[int],
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Dense ``(N, N)`` boolean mask (True = key in the query's neighbourhood), ``N = prod(size)``.

    For analysis and for dense/FlexAttention baselines; it is ``O(N^2)`` memory.
    """
    spatial = tuple(int(s) for s in size)
    ks, dil, causal = _window_args(kernel_size, dilation, is_causal, len(spatial))
    index, valid, _ = _flat_neighbourhoods(spatial, ks, dil, causal)
    n_tok = math.prod(spatial)
    rows = torch.arange(n_tok)[:, None].expand_as(index)
    mask = torch.zeros(n_tok, n_tok, dtype=torch.bool)
    mask[rows[valid], index[valid]] = True
    return mask.to(device)
