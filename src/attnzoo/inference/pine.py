"""PINE: position-invariant inference over documents (bidirectional documents + importance positions).

Wang, Zhang, Li, Xu, Ji, Xie, Wang, "Eliminating Position Bias of Language Models: A Mechanistic
Approach", ICLR 2025, arXiv:2407.01100.

The sequence is ``[prefix][doc_1]...[doc_D][suffix]`` (lengths ``P, L_1..L_D, S``). For a query
token ``x`` and key token ``y`` with RoPE (``theta_f`` the inverse frequencies):

* mask: prefix queries attend causally; a document query attends to the prefix, to every token
  of the other documents (bidirectional between documents) and causally inside its document; a
  suffix query attends to the prefix, every document and causally inside the suffix;
* importance of document ``j`` for ``x`` (per head): the mean over ``y in doc_j`` of the
  attention ``softmax_y(q_x . k_y / sqrt(d))`` computed WITHOUT position embeddings;
* positions: prefix tokens keep ``0..P-1``; the documents other than the query's own are laid out
  after the prefix in increasing importance (the most important one adjacent to the query); the
  query's own document (or the suffix) follows them, so ``p_x = P + (sum of the other documents'
  lengths) + offset(x)``; ties are broken by document index;
* logits ``l_xy = q_x R(theta (p_x - p_y)) k_y / sqrt(d)`` (RoPE on the re-assigned relative
  position), ``o_x = softmax_y(l_xy) V``.

No token's position depends on the order in which the documents were given, so permuting the
documents permutes the document tokens' outputs and leaves the prefix and suffix outputs unchanged.
The position-dependent logits are formed per (query, key) pair (``O(h N^2 d)`` memory) and passed to
:func:`attnzoo.kernels.attention.attention_reference` as an additive bias on zero queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnzoo.checks import check_divisible, check_tensor
from attnzoo.inference.hf_edit import AttentionFn, hf_attention_layers, replace_attention
from attnzoo.kernels.attention import attention_reference, merge_heads, split_heads

__all__ = [
    "LEDGER",
    "PINEAttention",
    "PineLayout",
    "pine_attention",
    "pine_attention_rotated",
    "pine_model",
    "rope_inv_freq",
    "rotary_embedding",
]

LEDGER = (
    "Verified by equations and properties (no official-code fixture): exact document-permutation "
    "invariance, and equality with causal RoPE attention when there are no documents.",
    "Importance is the per-head mean position-free attention of the query on each document's tokens; "
    "ties are broken by document index (the only order-dependent case, exact ties).",
    "Logits are formed per (query, key) pair, O(h N^2 d) memory: a reference implementation for "
    "moderate lengths, not the paper's optimised kernel.",
    "pine_model supports default (unscaled) RoPE, prompts without padding, and treats every generated "
    "token as part of the suffix.",
)


def rope_inv_freq(head_dim: int, base: float = 10000.0, device: torch.device | None = None) -> torch.Tensor:
    """``(head_dim / 2,)`` RoPE inverse frequencies ``base^(-2f / head_dim)``."""
    return base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)


@dataclass(frozen=True)
class PineLayout:
    """``[prefix][documents...][suffix]``; the suffix is whatever follows the documents."""

    prefix: int
    documents: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.prefix < 0 or any(int(n) < 1 for n in self.documents):
            raise ValueError(
                f"prefix must be >= 0 and documents non-empty, got {self.prefix}, {self.documents}"
            )

    @property
    def body(self) -> int:
        return self.prefix + sum(self.documents)

    def segments(self, n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(segment, offset)`` per token of a length-``n`` sequence: segment ``-1`` prefix,
        ``0..D-1`` documents, ``D`` suffix; offset inside the segment (prefix: the index)."""
        if n < self.body:
            raise ValueError(f"sequence of {n} tokens is shorter than prefix + documents = {self.body}")
        d = len(self.documents)
        lengths = [self.prefix, *self.documents, n - self.body]
        seg = torch.repeat_interleave(
            torch.arange(-1, d + 1, device=device), torch.tensor(lengths, device=device)
        )
        starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0)[:-1].tolist()], device=device)
        offset = torch.arange(n, device=device) - starts[seg + 1]
        return seg, offset


def _pine_mask(seg: torch.Tensor, offset: torch.Tensor, queries: torch.Tensor, num_docs: int) -> torch.Tensor:
    sq, sk = seg[queries][:, None], seg[None, :]
    oq, ok = offset[queries][:, None], offset[None, :]
    same_causal = (sq == sk) & (ok <= oq)
    prefix_query = sq < 0
    return torch.where(
        prefix_query,
        same_causal,
        (sk < 0) | same_causal | ((sk >= 0) & (sk < num_docs) & (sq != sk)),
    )


def pine_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PineLayout,
    *,
    inv_freq: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """PINE attention on un-rotated ``q (B, h, N_q, d)``, ``k, v (B, h, N, d)``; the queries are the
    last ``N_q`` tokens. Returns ``(B, h, N_q, d_v)``.

    Args:
        layout: prefix and document lengths.
        inv_freq: RoPE inverse frequencies ``(d / 2,)`` (default base 10000), half-split layout.
        scale: logit scale, ``d ** -0.5`` by default.
    """
    q = check_tensor(q, "q", ndim=4)
    k = check_tensor(k, "k", ndim=4)
    v = check_tensor(v, "v", ndim=4)
    b, h, n_q, d = q.shape
    n = k.shape[-2]
    if d % 2 or k.shape[:2] != (b, h) or v.shape[-2] != n or n_q > n:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit")
    scale = d**-0.5 if scale is None else scale
    inv_freq = rope_inv_freq(d, device=q.device) if inv_freq is None else inv_freq
    if inv_freq.shape != (d // 2,):
        raise ValueError(f"inv_freq must have shape ({d // 2},), got {tuple(inv_freq.shape)}")
    seg, offset = layout.segments(n, q.device)
    queries = torch.arange(n - n_q, n, device=q.device)
    num_docs = len(layout.documents)
    mask = _pine_mask(seg, offset, queries, num_docs)

    _, plain = attention_reference(q, k, v, mask=mask, scale=scale, return_weights=True)
    lengths = torch.tensor(layout.documents, device=q.device, dtype=q.dtype)
    member = (seg[:, None] == torch.arange(num_docs, device=q.device)).to(q.dtype)  # (N, D)
    importance = plain @ member / lengths  # (B, h, N_q, D)
    own = seg[queries]
    importance = importance.masked_fill(
        (own[:, None] == torch.arange(num_docs, device=q.device)), float("inf")
    )
    # rank: documents laid out in increasing importance, ties by index (own document last)
    imp_i, imp_j = importance[..., :, None], importance[..., None, :]
    idx = torch.arange(num_docs, device=q.device)
    before = (imp_j < imp_i) | ((imp_j == imp_i) & (idx[None, :] < idx[:, None]))  # (.., i, j): j before i
    not_own = (own[:, None] != idx).to(q.dtype)  # (N_q, D)
    start = layout.prefix + (before.to(q.dtype) * (lengths * not_own)[:, None, :]).sum(-1)  # (B, h, N_q, D)
    others = (lengths * not_own).sum(-1)  # (N_q,)

    seg_k = seg.clamp(min=0, max=max(num_docs - 1, 0))
    doc_pos = start.gather(-1, seg_k.expand(b, h, n_q, n)) + offset.to(q.dtype) if num_docs else None
    suffix_pos = (layout.prefix + others)[:, None] + offset.to(q.dtype)  # (N_q, N)
    prefix_pos = torch.arange(n, device=q.device, dtype=q.dtype).expand(n_q, n)
    in_doc = (seg >= 0) & (seg < num_docs)
    pos_k = torch.where(seg < 0, prefix_pos, suffix_pos).expand(b, h, n_q, n)
    if doc_pos is not None:
        pos_k = torch.where(in_doc, doc_pos, pos_k)
    own_pos = torch.where(
        own < 0, queries.to(q.dtype), layout.prefix + others + offset[queries].to(q.dtype)
    )  # (N_q,)
    delta = own_pos[:, None] - pos_k  # (B, h, N_q, N)

    half = d // 2
    q1, q2 = q[..., :half], q[..., half:]
    k1, k2 = k[..., :half], k[..., half:]
    a = q1[..., :, None, :] * k1[..., None, :, :] + q2[..., :, None, :] * k2[..., None, :, :]
    bb = q2[..., :, None, :] * k1[..., None, :, :] - q1[..., :, None, :] * k2[..., None, :, :]
    angle = delta[..., None] * inv_freq.to(q.dtype)
    logits = (a * angle.cos() - bb * angle.sin()).sum(-1) * scale
    zeros = torch.zeros_like(q)
    return attention_reference(zeros, k, v, mask=mask, bias=logits)


class PINEAttention(nn.Module):
    """Multi-head self-attention with RoPE run the PINE way over a document layout.

    ``forward(x (B, N, C), layout) -> (B, N, C)``.

    Args:
        dim: channels ``C``.
        num_heads: heads (must divide ``dim``; head size even).
        rope_base: RoPE base.
        qkv_bias: bias on the q/k/v projections.
    """

    def __init__(
        self, dim: int, num_heads: int, *, rope_base: float = 10000.0, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        if (dim // num_heads) % 2:
            raise ValueError(f"head size dim // num_heads = {dim // num_heads} must be even for RoPE")
        self.dim, self.num_heads, self.rope_base = dim, num_heads, float(rope_base)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, layout: PineLayout) -> torch.Tensor:
        x = check_tensor(x, "x", ndim=3)
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        inv_freq = rope_inv_freq(q.shape[-1], self.rope_base, x.device)
        return self.proj(merge_heads(pine_attention(q, k, v, layout, inv_freq=inv_freq)))


def _unrotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undo ``x * cos + rotate_half(x) * sin`` (half-split RoPE) with the same ``cos``/``sin``;
    dividing by ``cos^2 + sin^2`` keeps the inverse exact for tables rounded to low precision."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos - rotated_half * sin) / (cos * cos + sin * sin)


def rotary_embedding(model: nn.Module) -> nn.Module:
    """The rotary embedding module of a ``transformers`` model (the module with ``inv_freq`` and
    ``rope_type``), checked to be default, unscaled RoPE: the only kind PINE can undo and re-apply.

    Raises:
        ValueError: the model has no rotary embedding, or a scaled or non-default one (named).
    """
    rotary = next((m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "rope_type")), None)
    if rotary is None:
        found = "none"
    else:
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        if rotary.rope_type == "default" and scaling == 1.0:
            return rotary
        found = f"{rotary.rope_type!r} RoPE with attention_scaling={scaling}"
    raise ValueError(
        f"PINE needs default (unscaled) rotary position embeddings; {type(model).__name__} has {found}"
    )


def pine_attention_rotated(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: PineLayout,
    rotary: nn.Module,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`pine_attention` on the q/k a ``transformers`` attention module computed: rotated by the
    model's default RoPE (``rotary``, from :func:`rotary_embedding`) at positions ``0..N-1``.

    Undoes that RoPE with the model's own cos/sin tables and re-applies PINE's positions with its
    ``inv_freq``. ``query (B, h, N_q, d)`` are the last ``N_q`` tokens; ``key, value (B, h_kv, N, d)``
    with grouped heads (``h_kv`` dividing ``h``) repeated to ``h``. Returns ``(B, h, N_q, d_v)``.
    """
    query = check_tensor(query, "query", ndim=4)
    key = check_tensor(key, "key", ndim=4)
    value = check_tensor(value, "value", ndim=4)
    heads, n, n_q = query.shape[1], key.shape[-2], query.shape[-2]
    if heads % key.shape[1] or value.shape[1] != key.shape[1]:
        raise ValueError(
            f"key {tuple(key.shape)} and value {tuple(value.shape)} must share a head count dividing the "
            f"{heads} query heads"
        )
    if heads != key.shape[1]:
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    positions = torch.arange(n, device=query.device).unsqueeze(0)
    cos, sin = (t.to(query.dtype).unsqueeze(1) for t in rotary(value, positions))
    q = _unrotate(query, cos[..., n - n_q :, :], sin[..., n - n_q :, :])
    k = _unrotate(key, cos, sin)
    return pine_attention(q, k, value, layout, inv_freq=rotary.inv_freq, scale=scale)


@contextmanager
def pine_model(model: nn.Module, prefix: int, documents: Sequence[int]) -> Iterator[None]:
    """Run a RoPE ``transformers`` decoder (default RoPE, e.g. Llama) with PINE in every layer.

    The prompt must be ``[prefix][documents...][suffix]`` without padding, starting at position 0;
    cached decoding continues the suffix. The model's own RoPE is undone on q/k (standard
    positions ``0..N-1``, with the model's own cos/sin tables) and re-applied with PINE's positions
    (:func:`pine_attention_rotated`).

    Raises:
        ValueError: the model's rotary embedding is not default, unscaled RoPE (:func:`rotary_embedding`).
    """
    layout = PineLayout(int(prefix), tuple(int(n) for n in documents))
    layers = hf_attention_layers(model)
    rotary = rotary_embedding(model)

    def fn(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
    ) -> tuple[torch.Tensor, Any]:
        return pine_attention_rotated(query, key, value, layout, rotary, scale=scaling), None

    funcs: dict[nn.Module, AttentionFn] = {m: fn for m in layers.values()}
    with replace_attention(model, funcs):
        yield
