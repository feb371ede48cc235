"""Softmax attention as FuseMax's cascades of extended Einsums, with the cascades' cost model.

Nayak, Wu, Odemuyiwa, Pellauer, Emer and Fletcher, "FuseMax: Leveraging Extended Einsums to Optimize
Attention Accelerator Design" (MICRO 2024, arXiv 2406.10491) write attention as a *cascade* of
extended Einsums and classify the cascades by the number of *passes* they make over the key rank
``M``: a pass must finish a reduction over all of ``M`` before the next can use it. The 1-pass cascade
below is written as the authors spell FuseMax's cascade (FPSG-UIUC/accelerator-zoo,
``workspace/notebooks/fusemax.ipynb``); the 3- and 2-pass cascades are written by attnzoo in the same
notation (``GM`` global max, ``SN``/``SD`` numerator/denominator). Names: per batch and head,
queries ``Q_{e,p}`` (``p < P = N_q``), keys ``K_{e,m}`` (``m < M = N_k``), values ``V_{f,m}``; the
key rank is split into ``M1`` tiles of ``M0`` keys, ``BK_{e,m1,m0}`` and ``BV_{f,m1,m0}`` (the last
tile is shorter when ``M0`` does not divide ``M``).
``QK`` already carries the score scale (``Q`` is scaled first) and ``-inf`` where a key is masked
(``causal``, or ``False`` in a boolean ``mask`` broadcastable to ``(B, h, N_q, N_k)``).

3-pass cascade (the softmax as defined; :func:`three_pass_attention`)::

    pass 1:  QK_{m,p} = Q_{e,p} K_{e,m}          GM_p = max_m QK_{m,p}
    pass 2:  SN_{m,p} = exp(QK_{m,p} - GM_p)     SD_p = sum_m SN_{m,p}
    pass 3:  A_{m,p}  = SN_{m,p} / SD_p          AV_{f,p} = sum_m A_{m,p} V_{f,m}

2-pass cascade (the running max and denominator of pass 1 replace passes 1-2;
:func:`two_pass_attention`)::

    pass 1:  LM_{m1,p} = max_{m0} QK_{m1,m0,p}    RM_{m1+1,p} = max(RM_{m1,p}, LM_{m1,p})
             RD_{m1+1,p} = exp(RM_{m1,p} - RM_{m1+1,p}) RD_{m1,p} + sum_{m0} exp(QK_{m1,m0,p} - RM_{m1+1,p})
    pass 2:  A_{m,p} = exp(QK_{m,p} - RM_{M1,p}) / RD_{M1,p}      AV_{f,p} = sum_m A_{m,p} V_{f,m}

1-pass cascade, FuseMax's (:func:`fusemax_attention`)::

    QK_{m1,m0,p}   = Q_{e,p} BK_{e,m1,m0}
    LM_{m1,p}      = max_{m0} QK_{m1,m0,p}
    RM_{m1+1,p}    = max(RM_{m1,p}, LM_{m1,p})                  RM_{0,p} = -inf
    SLN_{m1,m0,p}  = exp(QK_{m1,m0,p} - RM_{m1+1,p})
    PRM_{m1,p}     = exp(RM_{m1,p} - RM_{m1+1,p})
    SPD_{m1,p}     = PRM_{m1,p} RD_{m1,p}
    SLD_{m1,p}     = sum_{m0} SLN_{m1,m0,p}
    RD_{m1+1,p}    = SPD_{m1,p} + SLD_{m1,p}                    RD_{0,p} = 0
    SPNV_{m1,f,p}  = PRM_{m1,p} RNV_{m1,f,p}
    SLNV_{m1,f,p}  = sum_{m0} SLN_{m1,m0,p} BV_{f,m1,m0}
    RNV_{m1+1,f,p} = SPNV_{m1,f,p} + SLNV_{m1,f,p}              RNV_{0,f,p} = 0
    AV_{f,p}       = RNV_{M1,f,p} / RD_{M1,p}

All three equal ``softmax(scale Q K^T) V`` (:func:`attnzoo.kernels.attention`). Each pass walks the
key tiles and recomputes its ``QK`` tile, so these are the schedules whose on-chip buffer does not
grow with ``M``; :func:`cascade_cost` models what each costs. A query row with no allowed key is
undefined (NaN), as in :mod:`attnzoo.kernels.attention`; a tile in which a row has no allowed key so
far adds nothing to it. While :mod:`attnzoo.capture` is active the cascade reports its attention
matrix ``exp(QK - RM_{M1}) / RD_{M1}`` from its own final max and denominator. The log-sum-exp form
of the same online softmax (one merged ``lse`` per block instead of a running max and denominator)
is :mod:`attnzoo.kernels.blockwise`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from attnzoo.capture import capturing, record, wants
from attnzoo.checks import check_bool, check_float, check_int, check_tensor
from attnzoo.kernels.attention import causal_mask

__all__ = [
    "PASSES",
    "CascadeCost",
    "bench_cost_model",
    "cascade_attention",
    "cascade_cost",
    "check_passes",
    "fusemax_attention",
    "three_pass_attention",
    "two_pass_attention",
]

PASSES: tuple[int, ...] = (1, 2, 3)
"""The pass counts of the cascades implemented here."""


def _prepare(
    q: object, k: object, v: object, tile: object, mask: object, causal: object, scale: object
) -> tuple[int, float]:
    """Validate the arguments of a cascade; returns ``(tile, scale)`` with the default scale filled in."""
    q = check_tensor(q, "q", ndim=4)
    k = check_tensor(k, "k", ndim=4, shape=(*q.shape[:2], None, q.shape[3]))
    check_tensor(v, "v", ndim=4, shape=(*q.shape[:2], k.shape[2], None))
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = may attend), got {mask!r}")
        want = (*q.shape[:3], k.shape[2])
        if mask.dim() > 4 or any(m not in (1, w) for m, w in zip(reversed(mask.shape), reversed(want))):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to (B, h, N_q, N_k) = {want}"
            )
    check_bool(causal, "causal")
    tile = check_int(tile, "tile")
    return tile, q.shape[-1] ** -0.5 if scale is None else check_float(scale, "scale")


def _allowed(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor | None:
    """The bool ``(.., N_q, N_k)`` mask of ``mask`` and ``causal`` together, or ``None``."""
    if causal:
        tri = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        return tri if mask is None else mask & tri
    return mask


def _tiles(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tile: int, allowed: torch.Tensor | None, scale: float
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each key tile ``m1``: ``QK_{m1,m0,p}`` as ``(B, h, P, M0)`` (scaled, ``-inf`` where
    ``allowed`` is False) and ``BV_{f,m1,m0}`` as ``(B, h, M0, F)``."""
    n_k = k.shape[-2]
    qs = q * scale
    for start in range(0, n_k, tile):
        stop = min(start + tile, n_k)
        qk = torch.einsum("bhpe,bhme->bhpm", qs, k[:, :, start:stop])
        if allowed is not None:
            qk = qk.masked_fill(~allowed[..., start:stop], float("-inf"))
        yield qk, v[:, :, start:stop]


def _finite(rm: torch.Tensor) -> torch.Tensor:
    """A running max with ``-inf`` (no allowed key yet) replaced by 0, so that ``exp(x - rm)`` is
    ``exp(-inf) = 0`` for those rows instead of ``exp(-inf + inf) = NaN``."""
    return torch.where(torch.isfinite(rm), rm, torch.zeros((), dtype=rm.dtype, device=rm.device))


def _record(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None,
    scale: float,
    rm: torch.Tensor,
    rd: torch.Tensor,
) -> None:
    """Report the cascade's attention matrix ``exp(QK - RM_{M1}) / RD_{M1}`` to active captures."""
    scores = torch.cat([qk for qk, _ in _tiles(q, k, v, k.shape[-2], allowed, scale)], dim=-1)
    probs = torch.exp(scores - _finite(rm)[..., None]) / rd[..., None]
    record(probs, scores, kind="softmax", values=v if wants("values") else None, mask=allowed)


def _running_max_and_denominator(
    tiles: Iterator[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1 of the 2-pass cascade: ``RM_{M1,p}`` and ``RD_{M1,p}`` as ``(B, h, P)``."""
    rm = torch.full_like(rows, float("-inf"))
    rd = torch.zeros_like(rows)
    for qk, _ in tiles:
        rm_next = torch.maximum(rm, qk.amax(dim=-1))  # RM_{m1+1} = max(RM_{m1}, LM_{m1})
        safe = _finite(rm_next)
        rd = torch.exp(rm - safe) * rd + torch.exp(qk - safe[..., None]).sum(dim=-1)
        rm = rm_next
    return rm, rd


def _normalised_pass(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tile: int,
    allowed: torch.Tensor | None,
    scale: float,
    row_max: torch.Tensor,
    denominator: torch.Tensor,
) -> torch.Tensor:
    """The last pass of the 2- and 3-pass cascades, given each row's max and denominator ``(B, h,
    P)``: ``A_{m,p} = exp(QK_{m,p} - max_p) / denominator_p`` and ``AV_{f,p} = sum_m A_{m,p} V_{f,m}``
    tile by tile, ``(B, h, P, F)``."""
    safe = _finite(row_max)[..., None]
    av = q.new_zeros((*q.shape[:-1], v.shape[-1]))
    for qk, bv in _tiles(q, k, v, tile, allowed, scale):
        av = av + torch.einsum("bhpm,bhmf->bhpf", torch.exp(qk - safe) / denominator[..., None], bv)
    if capturing():
        _record(q, k, v, allowed, scale, row_max, denominator)
    return av


def fusemax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    tile: int = 64,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention by FuseMax's 1-pass cascade (module docstring): one walk over the key tiles
    carrying the running max ``RM``, denominator ``RD`` and numerator ``RNV``, divided at the end.

    Args:
        q, k, v: ``(B, h, N_q, d)``, ``(B, h, N_k, d)``, ``(B, h, N_k, d_v)``.
        tile: keys per tile ``M0`` (any positive int; the last tile holds the rest).
        mask: bool, broadcastable to ``(B, h, N_q, N_k)``, True = may attend.
        causal: mask keys after each query (aligned to the last keys when ``N_k > N_q``).
        scale: score scale; ``d ** -0.5`` when ``None``.

    Returns:
        ``AV (B, h, N_q, d_v)``.
    """
    tile, scale = _prepare(q, k, v, tile, mask, causal, scale)
    allowed = _allowed(q, k, mask, causal)
    rows = q.new_zeros(q.shape[:-1])
    rm = torch.full_like(rows, float("-inf"))  # RM_{0,p}
    rd = torch.zeros_like(rows)  # RD_{0,p}
    rnv = q.new_zeros((*q.shape[:-1], v.shape[-1]))  # RNV_{0,f,p}, stored (B, h, P, F)
    for qk, bv in _tiles(q, k, v, tile, allowed, scale):
        lm = qk.amax(dim=-1)  # LM_{m1,p}
        rm_next = torch.maximum(rm, lm)  # RM_{m1+1,p}
        safe = _finite(rm_next)
        sln = torch.exp(qk - safe[..., None])  # SLN_{m1,m0,p}
        prm = torch.exp(rm - safe)  # PRM_{m1,p}
        rd = prm * rd + sln.sum(dim=-1)  # RD_{m1+1} = SPD_{m1} + SLD_{m1}
        slnv = torch.einsum("bhpm,bhmf->bhpf", sln, bv)  # SLNV_{m1,f,p}
        rnv = prm[..., None] * rnv + slnv  # RNV_{m1+1} = SPNV_{m1} + SLNV_{m1}
        rm = rm_next
    if capturing():
        _record(q, k, v, allowed, scale, rm, rd)
    return rnv / rd[..., None]  # AV_{f,p}


def two_pass_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    tile: int = 64,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention by the 2-pass cascade: pass 1 finds ``RM_{M1}`` and ``RD_{M1}`` tile by
    tile, pass 2 walks the tiles again for ``A`` and ``AV``. Arguments as :func:`fusemax_attention`."""
    tile, scale = _prepare(q, k, v, tile, mask, causal, scale)
    allowed = _allowed(q, k, mask, causal)
    rows = q.new_zeros(q.shape[:-1])
    rm, rd = _running_max_and_denominator(_tiles(q, k, v, tile, allowed, scale), rows)
    return _normalised_pass(q, k, v, tile, allowed, scale, rm, rd)


def three_pass_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    tile: int = 64,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention by the 3-pass cascade: the global max ``GM``, then the denominator ``SD``,
    then ``A`` and ``AV``, each pass a walk over the key tiles. Arguments as :func:`fusemax_attention`."""
    tile, scale = _prepare(q, k, v, tile, mask, causal, scale)
    allowed = _allowed(q, k, mask, causal)
    gm = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
    for qk, _ in _tiles(q, k, v, tile, allowed, scale):
        gm = torch.maximum(gm, qk.amax(dim=-1))  # GM_p
    safe = _finite(gm)[..., None]
    sd = torch.zeros_like(gm)
    for qk, _ in _tiles(q, k, v, tile, allowed, scale):
        sd = sd + torch.exp(qk - safe).sum(dim=-1)  # SD_p = sum_m SN_{m,p}
    return _normalised_pass(q, k, v, tile, allowed, scale, gm, sd)


_CASCADES = {1: fusemax_attention, 2: two_pass_attention, 3: three_pass_attention}


def check_passes(passes: object) -> int:
    """``passes`` if it is one of :data:`PASSES`; ``TypeError``/``ValueError`` naming it otherwise."""
    passes = check_int(passes, "passes")
    if passes not in PASSES:
        raise ValueError(f"passes must be one of {PASSES}, got {passes}")
    return passes


def cascade_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    passes: int = 1,
    tile: int = 64,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention by the ``passes``-pass cascade (1: :func:`fusemax_attention`, 2:
    :func:`two_pass_attention`, 3: :func:`three_pass_attention`); other arguments as those."""
    cascade = _CASCADES[check_passes(passes)]
    return cascade(q, k, v, tile=tile, mask=mask, causal=causal, scale=scale)


@dataclass(frozen=True)
class CascadeCost:
    """What one cascade costs on ``batch * heads`` attention problems (see :func:`cascade_cost`).

    Attributes:
        passes: walks over the key rank ``M``.
        key_reads: times every key ``K_{e,m}`` is read from memory (values are read once).
        flops: matmul FLOPs: ``passes`` times ``QK`` (``2 P M E``) and once ``AV`` (``2 P M F``)
            per problem; the ``exp``/``max``/division work is not counted (as the benchmark's
            FLOP counter does not count it).
        traffic_bytes: memory traffic of the schedule that recomputes ``QK`` in every pass.
        buffer_bytes: its on-chip buffer; independent of ``N`` for every pass count.
        single_read_buffer_bytes: the buffer the cascade needs to read ``K`` only once: a
            ``P0 x M`` score fiber per query tile when ``passes > 1`` (grows with ``N``), the same
            as ``buffer_bytes`` for the 1-pass cascade.
    """

    passes: int
    key_reads: int
    flops: int
    traffic_bytes: int
    buffer_bytes: int
    single_read_buffer_bytes: int


def cascade_cost(
    passes: int,
    n: int,
    d: int,
    *,
    tile: int,
    n_k: int | None = None,
    d_v: int | None = None,
    query_tile: int | None = None,
    batch: int = 1,
    heads: int = 1,
    bytes_per_element: int = 4,
) -> CascadeCost:
    """The cost model of the ``passes``-pass cascade for ``batch * heads`` problems.

    With ``P = n`` queries, ``M = n_k`` keys (default ``n``), ``E = d``, ``F = d_v`` (default
    ``d``), key tile ``M0 = tile``, query tile ``P0 = query_tile`` (default ``tile``), ``T =
    ceil(P / P0)`` query tiles and ``w = bytes_per_element``, per problem:

    - passes: 3, 2 or 1, the cascade's (the paper's classification: a pass cannot begin before the
      previous pass's reduction over all of ``M``, GM then SD in the 3-pass cascade, RM and RD in
      the 2-pass one; the 1-pass cascade carries RM, RD and RNV along ``M``);
    - traffic (recompute ``QK`` in every pass, buffer independent of ``M``):
      ``w (P E + P F + T (passes M E + M F))``: each query tile reads ``Q`` and writes ``AV`` once,
      reads all keys in every pass and all values in the last pass;
    - buffer of that schedule: ``w (P0 E + M0 (E + F) + P0 M0 + P0 F + 2 P0)``: the query tile,
      one key and value tile, one ``QK``/``SLN`` tile, the numerator ``RNV`` (or ``AV``) and the
      running max and denominator;
    - buffer to read every key once: for ``passes > 1`` the whole ``P0 x M`` score fiber instead
      of one ``P0 x M0`` tile, ``w (P0 E + M0 (E + F) + P0 M + P0 F + 2 P0)``, which grows with
      ``N``; this is the paper's point that a cascade of more than one pass trades on-chip buffer
      that scales with the sequence length against repeated memory traffic, and that only the
      1-pass cascade has neither.

    The terms are this model's: the paper gives the pass counts and the buffer/traffic trade-off
    but (in what attnzoo could read of it) no closed formulas; ``P0``/``M0`` stand for its ``P0``
    and ``M0`` tile ranks.
    """
    passes = check_passes(passes)
    n, d, tile = check_int(n, "n"), check_int(d, "d"), check_int(tile, "tile")
    m = n if n_k is None else check_int(n_k, "n_k")
    f = d if d_v is None else check_int(d_v, "d_v")
    p0 = tile if query_tile is None else check_int(query_tile, "query_tile")
    p0, m0 = min(p0, n), min(tile, m)
    problems = check_int(batch, "batch") * check_int(heads, "heads")
    w = check_int(bytes_per_element, "bytes_per_element")
    query_tiles = math.ceil(n / p0)
    traffic = n * d + n * f + query_tiles * (passes * m * d + m * f)
    state = p0 * d + m0 * (d + f) + p0 * f + 2 * p0
    return CascadeCost(
        passes=passes,
        key_reads=passes * query_tiles,
        flops=problems * (passes * 2 * n * m * d + 2 * n * m * f),
        traffic_bytes=problems * w * traffic,
        buffer_bytes=w * (state + p0 * m0),
        single_read_buffer_bytes=w * (state + p0 * (m if passes > 1 else m0)),
    )


def bench_cost_model(config: Mapping[str, Any], n: int, batch: int) -> dict[str, float]:
    """The cost model beside a benchmark row of ``fusemax_attention`` (card ``bench["cost_model"]``):
    for the configuration ``config`` (``dim``, ``num_heads``, ``tile``, ``passes``) at ``n`` tokens
    and ``batch``, float32, the modelled FLOPs (attention and the Q/K/V and output projections,
    ``8 B N C^2``) and the cascade's passes, traffic and buffers, with the 3-pass cascade's beside."""
    dim, heads = int(config["dim"]), int(config["num_heads"])
    tile, passes = int(config.get("tile", 64)), int(config.get("passes", 1))
    kwargs = {"tile": tile, "batch": batch, "heads": heads}
    ours = cascade_cost(passes, n, dim // heads, **kwargs)
    naive = cascade_cost(3, n, dim // heads, **kwargs)
    return {
        "passes": ours.passes,
        "model FLOPs": ours.flops + 8 * batch * n * dim * dim,
        "model traffic (B)": ours.traffic_bytes,
        "model buffer (B)": ours.buffer_bytes,
        "3-pass traffic (B)": naive.traffic_bytes,
        "3-pass single-read buffer (B)": naive.single_read_buffer_bytes,
    }
