"""Gated cross-modal attention, the inter-modal layer of Ilias & Askounis, "Context-aware attention
layers coupled with optimal transport domain adaptation and multimodal fusion methods for recognizing
dementia from spontaneous speech" (2023, arXiv 2305.16406): "self-attention layers with a gate model"
between the language (BERT tokens) and acoustic (DeiT patches of log-Mel images) streams.

Tokens ``x`` of one modality read the tokens ``z`` of the other, and a sigmoid gate decides, per
token and channel, how much of the read-out replaces the token::

    H   = Concat_h softmax(Q_h K_h^T / sqrt(d_h)) V_h W_O + b_O,   Q = x W_Q, K, V = z W_K, z W_V
    G   = sigmoid([x; H] W_G + b_G)                                  (B, N, C)
    out = G * H + (1 - G) * x

Only the paper's abstract was available to attnzoo: every line above is a reconstruction (see the
card's ledger).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_divisible, check_int, check_rate
from attnzoo.families import CrossAttention
from attnzoo.kernels import attention, merge_heads, split_heads
from attnzoo.registry import Card, register

__all__ = ["GatedCrossModalAttention"]


@register(
    Card(
        name="gated_cross_modal_attention",
        aliases=("gated_cross_attention", "cross_modal_gated_attention"),
        family="cross_attention",
        summary="Multi-head cross-attention from one modality's tokens to another's, mixed into the "
        "queries by a per-channel sigmoid gate of [token; read-out].",
        paper="Context-aware attention layers coupled with optimal transport domain adaptation and "
        "multimodal fusion methods for recognizing dementia from spontaneous speech",
        arxiv="2305.16406",
        year=2023,
        official_repo=None,
        parity="equations",
        time_complexity="O(N M C + (N + M) C^2)",
        memory_complexity="O((N + M) C) with SDPA (O(h N M) when capturing weights)",
        layouts=("BNC",),
        spatial_dims=1,
        ledger=(
            "Only the abstract was available to attnzoo and the authors publish no code: the layer is "
            "reconstructed from 'self-attention layers with a gate model ... for capturing the intra- "
            "and inter-modal interactions'; every equation of the module docstring is a guess.",
            "Guess: cross-attention is multi-head scaled dot product with queries from x and keys/values "
            "from the other modality (the usual cross-modal attention of multimodal transformers).",
            "Guess: the gate is one Linear(2C, C) + sigmoid on [x; H] with a convex mix G*H + (1-G)*x "
            "(the gated fusion of Kumar & Vepa, ICASSP 2020); the paper may gate differently.",
            "Guess: 8 heads by default; the paper's head count and widths are unknown.",
            "mask (B, M) True = real token of the other modality (padding of the shorter stream).",
        ),
        tiny={"dim": 16, "context_dim": 12, "num_heads": 2},
        bench={"dim": 256, "context_dim": 256, "num_heads": 8, "queries": 64},
        sweep={"num_heads": (1, 2, 4), "context_dim": (8, 12, 20), "size": (1, 8), "context_size": (1, 8)},
    )
)
class GatedCrossModalAttention(CrossAttention):
    """Gated cross-modal attention: ``x (B, N, C)`` reads ``context (B, M, C_ctx)`` -> ``(B, N, C)``.

    Args:
        dim: C, the width of the query modality.
        context_dim: C_ctx, the width of the other modality (default ``dim``).
        num_heads: heads h; must divide ``dim``.
        attn_drop: dropout on the attention probabilities (training only).
    """

    def __init__(
        self, dim: int, context_dim: int | None = None, num_heads: int = 8, *, attn_drop: float = 0.0
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        self.dim = dim
        self.context_dim = dim if context_dim is None else check_int(context_dim, "context_dim")
        self.num_heads = num_heads
        self.attn_drop = check_rate(attn_drop, "attn_drop")
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(self.context_dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gate = nn.Linear(2 * dim, dim)

    def read(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The cross-attention read-out ``H (B, N, C)`` before gating."""
        h = self.num_heads
        k, v = self.kv_proj(context).chunk(2, dim=-1)
        attn_mask = None if mask is None else mask[:, None, None, :]
        drop = self.attn_drop if self.training else 0.0
        out = attention(
            split_heads(self.q_proj(x), h),
            split_heads(k, h),
            split_heads(v, h),
            mask=attn_mask,
            dropout_p=drop,
        )
        return self.out_proj(merge_heads(out))

    def compute(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        size: tuple[int, ...] | None,
    ) -> torch.Tensor:
        read = self.read(x, context, mask)
        g = torch.sigmoid(self.gate(torch.cat([x, read], dim=-1)))
        return g * read + (1 - g) * x
