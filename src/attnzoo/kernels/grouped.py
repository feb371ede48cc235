"""Softmax attention restricted to groups of tokens, without forming the dense ``N x N`` pattern.

Two sparse patterns, both computed through :func:`attnzoo.kernels.attention` (SDPA, so no score
matrix is kept for backward either):

* :func:`routed_region_attention` (BiFormer's bi-level routing): tokens are cut into ``R``
  regions of ``T`` tokens; the queries of region ``r`` attend to the concatenated tokens of the
  key regions ``routes[r, 0..topk-1]``::

      O[r] = softmax(scale * Q[r] [K[s_1]; ...; K[s_topk]]^T) [V[s_1]; ...; V[s_topk]]

  The routed key/value regions are read with one ``index_select`` per tensor on a
  ``(B*R, T, h*d)`` view, so the forward holds ``topk`` copies of K and V (the same as a
  ``torch.gather`` formulation) but the backward is one ``index_add`` into a K/V-sized
  buffer, where a gather from an ``expand``-ed ``(B, R, R, T, C)`` view allocates ``R`` times K/V.
  A block-sparse mask over all keys would avoid the copies but costs ``R / topk`` times the score
  FLOPs (49x for BiFormer's first stage), so the gather is the cheaper exact form. Without
  autograd (inference) query regions are processed in chunks whose gathered copies never exceed
  the size of K and V, so the forward holds ``O(N C)`` memory for any ``topk`` (an exported
  program gathers all regions at once, as with autograd, so that its batch stays dynamic).
* :func:`segment_attention` (region attention): token ``i`` attends to every token ``j`` of its
  batch element with ``segments[i] == segments[j]``. Tokens are sorted by segment, segments are
  bucketed by size (sizes in a bucket within a factor ``bucket_ratio``), each bucket is packed
  into a padded ``(groups, h, S, d)`` batch with a key-padding mask, attended, and scattered back.
  Time ``O(sum_g |g|^2 d)`` up to the bucket padding, memory ``O(N h d)``.

While :func:`attnzoo.capture` is active, :func:`segment_attention` runs the dense masked form so
the recorded matrix is the full ``(B, h, N, N)`` pattern in input order; it runs the same dense form
while ``torch.export`` traces (the packed form's shapes depend on the label values, which an
exported graph cannot), so an exported program holds ``O(h N^2)`` scores. Under capture,
:func:`routed_region_attention` records one ``(B*R, h, T, topk*T)`` matrix per call (each query
region against its routed keys). The outputs are the same function either way.
"""

from __future__ import annotations

import torch

from attnzoo.capture import capturing
from attnzoo.kernels.attention import attention

__all__ = ["routed_region_attention", "segment_attention", "segment_mask"]


def routed_region_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    routes: torch.Tensor | None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of each query region over the tokens of its routed key regions.

    Args:
        q: ``(B, R, T, h, d)`` queries, region-major (``T`` tokens per region).
        k: ``(B, R, T_k, h, d)`` keys of the same ``R`` regions.
        v: ``(B, R, T_k, h, d_v)`` values.
        routes: ``(B, R, topk)`` int64 indices in ``[0, R)`` of the key regions each query region
            reads (order and duplicates are not interpreted: duplicates count twice);
            ``None`` means every region reads all ``R`` regions (dense attention).
        scale: score scale; ``d ** -0.5`` when ``None``.

    Returns:
        ``(B, R, T, h, d_v)``.
    """
    if q.dim() != 5 or k.dim() != 5 or v.dim() != 5:
        raise ValueError(
            f"q, k, v must be (B, R, T, h, d), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, r, t, h, d = q.shape
    tk, dv = k.shape[2], v.shape[-1]
    if k.shape[:2] != (b, r) or v.shape[:3] != k.shape[:3] or k.shape[3:] != (h, d) or v.shape[3] != h:
        raise ValueError(
            f"k and v must be (B, R, T_k, h, d) matching q {tuple(q.shape)}, got {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if routes is None:
        qh = q.reshape(b, r * t, h, d).transpose(1, 2)
        kh = k.reshape(b, r * tk, h, d).transpose(1, 2)
        vh = v.reshape(b, r * tk, h, dv).transpose(1, 2)
        out = attention(qh, kh, vh, scale=scale)
        return out.transpose(1, 2).reshape(b, r, t, h, dv)
    if routes.dim() != 3 or routes.shape[:2] != (b, r) or routes.dtype != torch.long:
        raise ValueError(
            f"routes must be an int64 (B, R, topk) = ({b}, {r}, topk) tensor, got "
            f"{routes.dtype} {tuple(routes.shape)}"
        )
    topk = routes.shape[-1]
    flat = (routes + r * torch.arange(b, device=routes.device).view(b, 1, 1)).reshape(-1)
    k_rows, v_rows = k.reshape(b * r, tk, h * d), v.reshape(b * r, tk, h * dv)
    q_rows = q.reshape(b * r, t, h, d)
    per_row = topk * tk * h * (d + dv)
    keep_graph = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    # one chunk under torch.export too: a loop over B*R rows would fix the batch size in the program
    whole = keep_graph or capturing() or torch.compiler.is_exporting()
    chunk = b * r if whole else max(1, (k.numel() + v.numel()) // per_row)
    outs = []
    for start in [0] if whole else range(0, b * r, chunk):
        rows = q_rows[start : start + chunk]
        idx = flat[start * topk : (start + rows.shape[0]) * topk]
        k_sel = k_rows.index_select(0, idx).view(rows.shape[0], topk * tk, h, d)
        v_sel = v_rows.index_select(0, idx).view(rows.shape[0], topk * tk, h, dv)
        outs.append(
            attention(rows.transpose(1, 2), k_sel.transpose(1, 2), v_sel.transpose(1, 2), scale=scale)
        )
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.transpose(1, 2).reshape(b, r, t, h, dv)


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """``(B, 1, N, N)`` bool, True where tokens ``i`` and ``j`` carry the same segment label."""
    return (segments.unsqueeze(-1) == segments.unsqueeze(-2)).unsqueeze(1)


def _buckets(counts: list[int], ratio: float) -> list[list[int]]:
    """Group indices sorted by size (descending), cut so that a bucket's sizes are within ``ratio``."""
    order = sorted(range(len(counts)), key=lambda g: -counts[g])
    buckets: list[list[int]] = []
    for g in order:
        if buckets and counts[g] * ratio >= counts[buckets[-1][0]]:
            buckets[-1].append(g)
        else:
            buckets.append([g])
    return buckets


def segment_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segments: torch.Tensor,
    *,
    scale: float | None = None,
    bucket_ratio: float = 1.25,
) -> torch.Tensor:
    """Softmax attention among the tokens that share a segment label (per batch element).

    Equals ``attention(q, k, v, mask=segment_mask(segments))`` without forming an ``N x N``
    tensor: segments are packed into padded batches, bucketed so that a bucket's largest segment
    is at most ``bucket_ratio`` times its smallest (so padding costs at most that factor in
    tokens and its square in score FLOPs, and one huge segment never pads the small ones).

    Args:
        q, k: ``(B, h, N, d)``; v: ``(B, h, N, d_v)``.
        segments: ``(B, N)`` integer labels (any values; equal labels in different batch elements
            are different segments). Every token is in a segment with at least itself.
        scale: score scale; ``d ** -0.5`` when ``None``.
        bucket_ratio: size spread allowed inside one padded bucket (``>= 1``).

    Returns:
        ``(B, h, N, d_v)``.
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k, v must be (B, h, N, d) of one shape (v may differ in d), got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, n, _ = q.shape
    dv = v.shape[-1]
    if segments.shape != (b, n) or segments.is_floating_point() or segments.is_complex():
        raise ValueError(
            f"segments must be an integer ({b}, {n}) tensor, got {segments.dtype} {tuple(segments.shape)}"
        )
    if segments.device != q.device:
        raise ValueError(f"segments is on {segments.device} but q is on {q.device}")
    if bucket_ratio < 1:
        raise ValueError(f"bucket_ratio must be >= 1, got {bucket_ratio}")
    if capturing() or torch.compiler.is_exporting():
        return attention(q, k, v, mask=segment_mask(segments), scale=scale)
    with torch.no_grad():
        _, label = torch.unique(segments, return_inverse=True)
        key = label + (label.max() + 1) * torch.arange(b, device=segments.device).unsqueeze(1)
        _, group, counts = torch.unique(key.reshape(-1), return_inverse=True, return_counts=True)
        order = torch.argsort(group, stable=True)
        starts = torch.cumsum(counts, 0) - counts
    qt, kt, vt = (x.transpose(1, 2).reshape(b * n, h, x.shape[-1]) for x in (q, k, v))
    count_list = counts.tolist()
    tokens: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    for bucket in _buckets(count_list, bucket_ratio):
        s = count_list[bucket[0]]
        g = torch.tensor(bucket, device=q.device)
        size = counts[g].unsqueeze(1)
        pos = torch.arange(s, device=q.device)
        tok = order[starts[g].unsqueeze(1) + torch.minimum(pos, size - 1)].reshape(-1)
        qb, kb, vb = (
            x.index_select(0, tok).view(len(bucket), s, h, -1).transpose(1, 2) for x in (qt, kt, vt)
        )
        valid = pos < size
        full = bool(valid.all())
        mask = None if full else valid.view(len(bucket), 1, 1, s)
        ob = attention(qb, kb, vb, mask=mask, scale=scale).transpose(1, 2).reshape(-1, h, dv)
        keep = None if full else valid.reshape(-1)
        tokens.append(tok if keep is None else tok[keep])
        outputs.append(ob if keep is None else ob[keep])
    with torch.no_grad():
        perm = torch.cat(tokens)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    out = torch.cat(outputs).index_select(0, inverse)
    return out.view(b, n, h, dv).transpose(1, 2)
