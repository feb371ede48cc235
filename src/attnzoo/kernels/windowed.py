"""Local softmax attention that never forms the ``N x N`` matrix: banded (sliding-window) and grouped.

Both compute ``O = softmax(scale * Q K^T + log(M)) V`` for a sparse boolean pattern ``M`` through
:func:`attnzoo.kernels.attention`, one block of queries at a time against only the keys the
block can reach, so time and memory are ``O(N * span * d)`` instead of ``O(N^2)``.

* :func:`sliding_window_attention`: query ``i`` sees keys ``i - left <= j <= i + right``
  (:func:`band_mask`). Queries are cut into blocks of ``block_size``; block ``c`` reads key blocks
  ``c - ceil(left / b) .. c + ceil(right / b)`` and a band mask selects the exact window. Calls that
  need no gradient may run on compiled FlexAttention where it is faster
  (:mod:`attnzoo.kernels.flex_dispatch`, which logs the path it takes).
* :func:`grouped_attention`: position ``p`` belongs to group ``(p + offset) // group_size``; query
  ``i`` sees the keys of its own group plus the first ``num_sink`` tokens ("attention sinks"),
  optionally causally (:func:`group_mask`). This is the S2-attention pattern of LongLoRA/SinkLoRA.
  Whole groups without sinks or padding need no mask: each group is plain (causal) SDPA; other
  patterns may run on compiled FlexAttention when no gradient is needed (as the sliding window).

Tensors are ``q, k: (B, h, N, d)``, ``v: (B, h, N, d_v)`` (self-attention: one ``N``); both take
a ``key_padding_mask (B, N)`` (True = real token) that hides padded keys from every query (padded
queries keep their pattern, so no row is empty; their outputs are meaningless). While
:func:`attnzoo.capture` is active both run the dense masked form so the recorded matrix is the
full ``(B, h, N, N)`` pattern; the outputs are the same function either way. Short sequences take
the dense form too, except while ``torch.export`` traces: the blocked form is then used for every
``N``, so that an exported program is not limited to the traced length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnzoo.capture import capturing
from attnzoo.kernels import flex_dispatch
from attnzoo.kernels.attention import attention, padding_mask

__all__ = ["band_mask", "group_mask", "grouped_attention", "sliding_window_attention"]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, h, N, d), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    n = q.shape[-2]
    if k.shape[-2] != n or v.shape[-2] != n:
        raise ValueError(
            f"q, k, v must have the same N (self-attention), got {q.shape[-2]}, {k.shape[-2]}, {v.shape[-2]}"
        )
    return n


def _check_nonneg_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def band_mask(n_q: int, n_k: int, left: int, right: int, device: torch.device | None = None) -> torch.Tensor:
    """``(N_q, N_k)`` bool, True where ``i - left <= j <= i + right``."""
    rel = torch.arange(n_k, device=device).unsqueeze(0) - torch.arange(n_q, device=device).unsqueeze(1)
    return (rel >= -left) & (rel <= right)


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    left: int,
    right: int,
    scale: float | None = None,
    dropout_p: float = 0.0,
    block_size: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention restricted to the band ``i - left <= j <= i + right``.

    Args:
        q, k, v: ``(B, h, N, d)``, ``(B, h, N, d)``, ``(B, h, N, d_v)``.
        left: keys visible before each query (``0`` = none).
        right: keys visible after each query (``0`` = causal).
        scale: score scale; ``d ** -0.5`` when ``None``.
        dropout_p: attention dropout (apply only in training).
        block_size: query block length ``b``; default ``max(left, right, 32)`` so that a block
            reads at most three key blocks. Sequences no longer than the key span ``(1 +
            ceil(left/b) + ceil(right/b)) * b`` use one dense masked call (same cost bound).
            Given explicitly, the blocked kernel runs (never FlexAttention).
        key_padding_mask: ``(B, N)`` bool, True = real token; padded keys are hidden.

    Returns:
        ``(B, h, N, d_v)``. Peak extra memory is ``O(B h N span)``, never ``O(N^2)`` once
        ``N > span``.
    """
    n = _check_qkv(q, k, v)
    left = _check_nonneg_int(left, "left")
    right = _check_nonneg_int(right, "right")
    b = max(left, right, 32) if block_size is None else _check_nonneg_int(block_size, "block_size")
    if b == 0:
        raise ValueError("block_size must be positive")
    before, after = math.ceil(left / b), math.ceil(right / b)
    span = (before + 1 + after) * b
    if capturing() or (not torch.compiler.is_exporting() and n <= span):
        mask = band_mask(n, n, left, right, q.device)
        if key_padding_mask is not None:
            mask = mask & padding_mask(key_padding_mask, key_padding_mask[:, None])
        return attention(q, k, v, mask=mask, scale=scale, dropout_p=dropout_p)
    if block_size is None and key_padding_mask is None and not dropout_p:
        out = flex_dispatch.band(q, k, v, left, right, scale)
        if out is not None:
            return out
    bsz, h, _, d = q.shape
    dv = v.shape[-1]
    nb = (n + b - 1) // b
    pad_end = nb * b - n
    qb = F.pad(q, (0, 0, 0, pad_end)).reshape(bsz, h * nb, b, d)
    pad = (0, 0, before * b, pad_end + after * b)
    kb = F.pad(k, pad).unfold(2, span, b).transpose(-1, -2).reshape(bsz, h * nb, span, d)
    vb = F.pad(v, pad).unfold(2, span, b).transpose(-1, -2).reshape(bsz, h * nb, span, dv)
    # query i = c*b + r reads key j = (c - before)*b + s, so j - i = s - before*b - r for every block c
    r = torch.arange(b, device=q.device)
    s = torch.arange(span, device=q.device)
    c = torch.arange(nb, device=q.device)
    rel = s.unsqueeze(0) - before * b - r.unsqueeze(1)
    in_band = (rel >= -left) & (rel <= right)
    j = (c.unsqueeze(1) - before) * b + s.unsqueeze(0)
    key_ok = (j >= 0) & (j < n)
    query_pad = (c.unsqueeze(1) * b + r.unsqueeze(0)) >= n  # padded query rows keep their own (zero) key
    mask = in_band & (key_ok.unsqueeze(1) | query_pad.unsqueeze(2))
    if key_padding_mask is None:
        mask = mask.unsqueeze(0).expand(h, nb, b, span).reshape(h * nb, b, span)
    else:
        keep_q = F.pad(key_padding_mask, (0, pad_end)).reshape(bsz, nb, b)
        keep_k = F.pad(key_padding_mask, (before * b, pad_end + after * b)).unfold(1, span, b)
        mask = mask & (keep_k.unsqueeze(2) | ~keep_q.unsqueeze(3))  # (B, nb, b, span)
        mask = mask.unsqueeze(1).expand(bsz, h, nb, b, span).reshape(bsz, h * nb, b, span)
    out = attention(qb, kb, vb, mask=mask, scale=scale, dropout_p=dropout_p)
    # a gather, not a slice: a slice's strides would make an exported program guard on b dividing N
    return out.reshape(bsz, h, nb * b, dv).index_select(2, torch.arange(n, device=q.device))


def group_mask(
    n: int,
    group_size: int,
    *,
    offset: int = 0,
    num_sink: int = 0,
    causal: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``(N, N)`` bool pattern of :func:`grouped_attention`, True = may attend."""
    pos = torch.arange(n, device=device)
    group = torch.div(pos + offset, group_size, rounding_mode="floor")
    mask = (group.unsqueeze(1) == group.unsqueeze(0)) | (pos < num_sink).unsqueeze(0)
    if causal:
        mask &= pos.unsqueeze(0) <= pos.unsqueeze(1)
    return mask


def grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group_size: int,
    offset: int = 0,
    num_sink: int = 0,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention within token groups plus global sink keys.

    Position ``p`` is in group ``(p + offset) // group_size`` (so ``0 < offset < group_size``
    shifts the group borders and makes the first and last groups partial). Query ``i`` attends
    to the keys of its group and to positions ``< num_sink``; with ``causal`` only to ``j <= i``.

    Args:
        q, k, v: ``(B, h, N, d)``, ``(B, h, N, d)``, ``(B, h, N, d_v)``.
        group_size: tokens per group ``G``.
        offset: group shift, ``0 <= offset < group_size``.
        num_sink: number of leading tokens every query may attend to.
        causal: restrict to ``j <= i``.
        scale: score scale; ``d ** -0.5`` when ``None``.
        dropout_p: attention dropout (apply only in training).
        key_padding_mask: ``(B, N)`` bool, True = real token; padded keys (sinks included) are hidden.

    Returns:
        ``(B, h, N, d_v)``; each query block reads ``num_sink + G`` keys, so memory is
        ``O(B h N (G + num_sink))``.
    """
    n = _check_qkv(q, k, v)
    g = _check_nonneg_int(group_size, "group_size")
    if g == 0:
        raise ValueError("group_size must be positive")
    offset = _check_nonneg_int(offset, "offset")
    if offset >= g:
        raise ValueError(f"offset must be < group_size={g}, got {offset}")
    num_sink = min(_check_nonneg_int(num_sink, "num_sink"), n)
    if capturing() or (not torch.compiler.is_exporting() and n + offset <= g):
        mask = group_mask(n, g, offset=offset, num_sink=num_sink, causal=causal, device=q.device)
        if key_padding_mask is not None:
            mask = mask & padding_mask(key_padding_mask, key_padding_mask[:, None])
        return attention(q, k, v, mask=mask, scale=scale, dropout_p=dropout_p)
    bsz, h, _, d = q.shape
    dv = v.shape[-1]
    whole = not (offset or num_sink or n % g or torch.compiler.is_exporting())
    if not whole and key_padding_mask is None and not dropout_p:
        out = flex_dispatch.groups(q, k, v, g, offset, num_sink, causal, scale)
        if out is not None:
            return out
    if whole and key_padding_mask is None:
        # whole groups and nothing else: each group is plain (causal) attention, no mask needed
        shape = (bsz, h * (n // g), g)
        out = attention(
            q.reshape(*shape, d),
            k.reshape(*shape, d),
            v.reshape(*shape, dv),
            causal=causal,
            scale=scale,
            dropout_p=dropout_p,
        )
        return out.reshape(bsz, h, n, dv)
    ng = (n + offset + g - 1) // g
    pad = (0, 0, offset, ng * g - n - offset)
    qg = F.pad(q, pad).reshape(bsz, h, ng, g, d)
    kg = F.pad(k, pad).reshape(bsz, h, ng, g, d)
    vg = F.pad(v, pad).reshape(bsz, h, ng, g, dv)
    dev = q.device
    cidx = torch.arange(ng, device=dev)
    r = torch.arange(g, device=dev)
    pos = cidx.unsqueeze(1) * g + r.unsqueeze(0) - offset  # (ng, G) token position of each slot
    valid = (pos >= 0) & (pos < n)
    # keys inside the group: real tokens (causal: not after the query); padded query rows keep themselves
    same = valid.unsqueeze(1).expand(ng, g, g)
    if causal:
        same = same & (r.unsqueeze(0) <= r.unsqueeze(1))
    same = same | torch.eye(g, dtype=torch.bool, device=dev)
    if num_sink:
        sink = torch.arange(num_sink, device=dev)
        sink_group = torch.div(sink + offset, g, rounding_mode="floor")
        # a sink already inside the query's group is reached through the group keys: count it once
        sink_ok = (sink_group.unsqueeze(0) != cidx.unsqueeze(1)).unsqueeze(1)  # (ng, 1, S)
        if causal:
            sink_ok = sink_ok & (sink.view(1, 1, -1) <= pos.unsqueeze(2))
        sink_ok = sink_ok.expand(ng, g, num_sink)
        kg = torch.cat([k[:, :, :num_sink].unsqueeze(2).expand(bsz, h, ng, num_sink, d), kg], dim=3)
        vg = torch.cat([v[:, :, :num_sink].unsqueeze(2).expand(bsz, h, ng, num_sink, dv), vg], dim=3)
        mask = torch.cat([sink_ok, same], dim=2)
    else:
        mask = same
    span = g + num_sink
    if key_padding_mask is None:
        mask = mask.unsqueeze(0).expand(h, ng, g, span).reshape(h * ng, g, span)
    else:
        keep = F.pad(key_padding_mask, (offset, ng * g - n - offset)).reshape(bsz, ng, g)
        sinks = key_padding_mask[:, None, :num_sink].expand(bsz, ng, num_sink)
        keep_k = torch.cat([sinks, keep], dim=2)  # (B, ng, span), in the order of the key slots
        mask = mask & (keep_k.unsqueeze(2) | ~keep.unsqueeze(3))  # (B, ng, G, span)
        mask = mask.unsqueeze(1).expand(bsz, h, ng, g, span).reshape(bsz, h * ng, g, span)
    out = attention(
        qg.reshape(bsz, h * ng, g, d),
        kg.reshape(bsz, h * ng, span, d),
        vg.reshape(bsz, h * ng, span, dv),
        mask=mask,
        scale=scale,
        dropout_p=dropout_p,
    )
    # a gather, not a slice: a slice's strides would make an exported program guard on G dividing N
    return out.reshape(bsz, h, ng * g, dv).index_select(2, torch.arange(offset, offset + n, device=dev))
