"""Multi-head softmax self-attention (Vaswani et al., "Attention Is All You Need", 2017, eq. 1-2).

``MultiHead(X) = Concat_i softmax(Q_i K_i^T / sqrt(d)) V_i W_O`` with ``Q, K, V = X W_{Q,K,V}``;
the softmax baseline every other token mixer is compared with.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_rate
from attnzoo.families import TokenMixer
from attnzoo.kernels import attention, merge_heads, split_heads
from attnzoo.kernels.attention import sequence_padding_mask
from attnzoo.registry import Card, register

__all__ = ["MultiHeadSelfAttention"]


@register(
    Card(
        name="mhsa",
        aliases=("softmax", "self_attention"),
        family="token_mixer",
        summary="Multi-head softmax self-attention over all tokens (the baseline).",
        paper="Attention Is All You Need",
        arxiv="1706.03762",
        year=2017,
        parity="oracle",
        time_complexity="O(N^2 C + N C^2)",
        memory_complexity="O(N C) with SDPA (O(h N^2) when capturing weights)",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        key_padding="any",
        ledger=(
            "Verified against torch.nn.MultiheadAttention (same projections, no bias_kv/add_zero_attn).",
        ),
        tiny={"dim": 8, "num_heads": 2},
        sweep={
            "dim": (8, 16, 24),
            "num_heads": (1, 2, 4, 8),
            "causal": (False, True),
            "qkv_bias": (True, False),
            "size": (1, 12),
        },
        bench={"dim": 256, "num_heads": 4},
    )
)
class MultiHeadSelfAttention(TokenMixer):
    """Softmax self-attention.

    Args:
        dim: channels C of ``x (B, N, C)``.
        num_heads: heads h; must divide ``dim``.
        qkv_bias: bias on the fused Q/K/V projection.
        causal: mask future tokens.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qkv_bias: bool = True,
        causal: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_bool(qkv_bias, "qkv_bias")
        check_bool(causal, "causal")
        check_rate(attn_drop, "attn_drop")
        check_rate(proj_drop, "proj_drop")
        self.dim = dim
        self.num_heads = num_heads
        self.causal = causal
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)
        drop = self.attn_drop if self.training else 0.0
        mask = sequence_padding_mask(key_padding_mask, self.causal)
        out = attention(q, k, v, mask=mask, causal=self.causal, dropout_p=drop)
        return self.proj_drop(self.proj(merge_heads(out)))
