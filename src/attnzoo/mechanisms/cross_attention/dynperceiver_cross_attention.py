"""Latent/feature cross-attention layer of Dynamic Perceiver (Han et al., "Dynamic Perceiver for
Efficient Visual Recognition", ICCV 2023, Sec. 3.2; the Perceiver IO attention of Jaegle et al.,
arXiv 2107.14795, Appendix E).

A pre-LayerNorm cross-attention followed by a pre-LayerNorm MLP, used both ways in DynPerceiver
(latent tokens read CNN features, "x2z", and CNN features read latents, "z2x")::

    A   = MHA(LN_q(X), LN_kv(Z))           Q = X W_q, K = Z W_k + P, V = Z W_v  (no biases)
    MHA = Concat_h softmax(Q_h K_h^T / sqrt(d_qk / h)) V_h  W_o + b_o
    Y   = X + A  (or A without the attention residual),   out = Y + W_2 GELU(W_1 LN(Y))

``P`` is an optional learned per-key-position bias added to the projected keys (the official
``rpb``, an absolute bias over a fixed number of context tokens, e.g. a pooled 7x7 feature map).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int, check_rate, check_tensor, tracing
from attnzoo.families import CrossAttention
from attnzoo.kernels import attention, merge_heads, split_heads
from attnzoo.registry import Card, register

__all__ = ["DynPerceiverCrossAttention", "PerceiverAttention"]


class PerceiverAttention(nn.Module):
    """Bare Perceiver multi-head attention: ``x (B, N, C_q), context (B, M, C_kv) -> (B, N, C_out)``.

    Args:
        dim: query channels C_q.
        context_dim: key/value channels C_kv.
        num_heads: h; must divide ``qk_dim`` and ``v_dim``.
        qk_dim: channels of Q and K (default ``dim``).
        v_dim: channels of V (default ``qk_dim``).
        out_dim: output channels (default ``dim``).
        context_tokens: when set, a learned bias ``(context_tokens, qk_dim)`` is added to the
            projected keys and ``M`` must equal ``context_tokens``.
        attn_drop: dropout on the attention probabilities (training only).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_heads: int = 1,
        *,
        qk_dim: int | None = None,
        v_dim: int | None = None,
        out_dim: int | None = None,
        context_tokens: int | None = None,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        qk_dim = dim if qk_dim is None else qk_dim
        v_dim = qk_dim if v_dim is None else v_dim
        out_dim = dim if out_dim is None else out_dim
        check_divisible(qk_dim, num_heads, "qk_dim", "num_heads")
        check_divisible(v_dim, num_heads, "v_dim", "num_heads")
        if context_tokens is not None and context_tokens <= 0:
            raise ValueError(f"context_tokens must be positive or None, got {context_tokens}")
        self.num_heads = num_heads
        self.context_tokens = context_tokens
        self.attn_drop = attn_drop
        self.q_proj = nn.Linear(dim, qk_dim, bias=False)
        self.k_proj = nn.Linear(context_dim, qk_dim, bias=False)
        self.v_proj = nn.Linear(context_dim, v_dim, bias=False)
        self.o_proj = nn.Linear(v_dim, out_dim)
        self.key_position_bias = (
            nn.Parameter(torch.zeros(context_tokens, qk_dim)) if context_tokens is not None else None
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``mask (B, M)`` bool, True = attend; every row needs a True."""
        if self.context_tokens is not None and context.shape[1] != self.context_tokens:
            raise ValueError(
                f"context has {context.shape[1]} tokens but the key position bias was built for "
                f"context_tokens={self.context_tokens}"
            )
        k = self.k_proj(context)
        if self.key_position_bias is not None:
            k = k + self.key_position_bias
        h = self.num_heads
        q, k, v = split_heads(self.q_proj(x), h), split_heads(k, h), split_heads(self.v_proj(context), h)
        attn_mask = None
        if mask is not None:
            check_tensor(mask, "mask", ndim=2, floating=False, finite=False)
            if not tracing() and not bool(mask.any(dim=1).all()):
                raise ValueError("mask leaves a query with no key: every row needs at least one True")
            attn_mask = mask[:, None, None, :]
        drop = self.attn_drop if self.training else 0.0
        return self.o_proj(merge_heads(attention(q, k, v, mask=attn_mask, dropout_p=drop)))


@register(
    Card(
        name="dynperceiver_cross_attention",
        aliases=("dynamic_perceiver_cross_attention", "perceiver_cross_attention_layer"),
        family="cross_attention",
        summary="Pre-LN Perceiver cross-attention + MLP between latent tokens and CNN features, with an "
        "optional learned per-key-position bias (Dynamic Perceiver x2z / z2x).",
        paper="Dynamic Perceiver for Efficient Visual Recognition",
        arxiv="2306.11248",
        year=2023,
        official_repo="LeapLabTHU/Dynamic_Perceiver",
        official_commit="0d2a6299ded1515f31efdddb453b5d429202e806",
        parity="official",
        parity_fixtures=("dynperceiver_cross_attention",),
        time_complexity="O(N M d_qk + (N + M) C d_qk + N C^2 w)",
        memory_complexity="O((N + M) C) with SDPA (O(h N M) when capturing weights)",
        layouts=("BNC",),
        spatial_dims=0,
        ledger=(
            "Key padding: attnzoo's mask is True = attend (the official pad_mask is True = padded); "
            "the official fills padded logits with -finfo.max, attnzoo masks through SDPA, identical "
            "unless a row is fully padded: officially uniform weights, attnzoo raises ValueError.",
            "Parameters: official cross_attn.q_norm/kv_norm/attention.{q,k,v,o}_proj and "
            "mlp.{layernorm,fc1,fc2} map to q_norm/kv_norm/attn.{q,k,v,o}_proj and "
            "mlp_norm/fc1/fc2; relative_position_bias (1, feat_w*feat_h, qk) becomes "
            "attn.key_position_bias (M, qk) (attnzoo.official.dynperceiver_cross_attention converts).",
            "rpb is an absolute per-key-position bias added to the projected keys (called relative "
            "position bias officially); attnzoo names it context_tokens=M instead of feat_w, feat_h, "
            "and raises ValueError when the context length differs (officially a broadcast error).",
            "Dropout (training only) is applied to the attention probabilities and to the residual "
            "branches as officially (not to the attention output without attention_residual).",
            "The official MultiHeadAttention with num_output_channels != q "
            "channels is PerceiverAttention(out_dim=...) (not registered: it is not (B, N, C) -> (B, N, C)).",
            "attn_mask (officially NotImplementedError) is not offered.",
        ),
        tiny={"dim": 16, "context_dim": 12, "num_heads": 2, "widening_factor": 2, "context_tokens": 6},
        sweep={"context_dim": (8, 12), "num_heads": (1, 2), "widening_factor": (1, 2), "size": (1, 8)},
        bench={
            "dim": 256,
            "context_dim": 256,
            "num_heads": 1,
            "context_tokens": 49,
            "sizes": [(49,)],
            "queries": 128,
        },
        conformance={
            "context_len": 6,
            "skip": {
                "export_dynamic_size": "the learned key position bias of context_tokens "
                "(set in the tiny and benchmark configurations) fixes M"
            },
        },
    )
)
class DynPerceiverCrossAttention(CrossAttention):
    """Cross-attention layer on ``x (B, N, C)`` reading ``context (B, M, C_ctx)``; returns ``(B, N, C)``.

    Args:
        dim: C (query channels; also the output channels).
        context_dim: C_ctx.
        num_heads: h; must divide ``qk_dim`` and ``v_dim``.
        qk_dim: channels of Q and K (default ``dim``; DynPerceiver's z2x uses ``dim // 8``).
        v_dim: channels of V (default ``qk_dim``).
        widening_factor: MLP hidden size is ``widening_factor * dim``.
        attention_residual: add ``x`` to the attention output.
        context_tokens: M for the learned key-position bias (the official ``rpb`` with
            ``feat_w * feat_h``), or ``None`` for no bias (any M).
        dropout: attention-probability and residual-branch dropout (training only).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_heads: int = 1,
        *,
        qk_dim: int | None = None,
        v_dim: int | None = None,
        widening_factor: int = 1,
        attention_residual: bool = True,
        context_tokens: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int(dim, "dim")
        check_int(context_dim, "context_dim")
        check_int(widening_factor, "widening_factor")
        if context_tokens is not None:
            check_int(context_tokens, "context_tokens")
        check_bool(attention_residual, "attention_residual")
        check_rate(dropout, "dropout")
        self.dim = dim
        self.context_dim = context_dim
        self.attention_residual = attention_residual
        self.q_norm = nn.LayerNorm(dim)
        self.kv_norm = nn.LayerNorm(context_dim)
        self.attn = PerceiverAttention(
            dim,
            context_dim,
            num_heads,
            qk_dim=qk_dim,
            v_dim=v_dim,
            out_dim=dim,
            context_tokens=context_tokens,
            attn_drop=dropout,
        )
        self.mlp_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, widening_factor * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(widening_factor * dim, dim)
        self.drop = nn.Dropout(dropout)

    def compute(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        size: tuple[int, ...] | None,
    ) -> torch.Tensor:
        a = self.attn(self.q_norm(x), self.kv_norm(context), mask)
        y = x + self.drop(a) if self.attention_residual else a
        return y + self.drop(self.fc2(self.act(self.fc1(self.mlp_norm(y)))))
