"""BAM-style soft mixture of attention experts, upcycled from dense attention layers.

Zhang, Gritsch, Gnaneshwar, Guo, Cairuz, Venkitesh, Foerster, Blunsom, Ruder, Üstün, Locatelli,
"BAM! Just Like That: Simple and Efficient Parameter Upcycling for Mixture of Experts",
arXiv:2408.08274 (2024).

With ``E`` attention experts (each multi-head softmax attention with its own ``W_Q^e, W_O^e`` and,
unless the key/value projections are shared, ``W_K^e, W_V^e``) and a router ``W_r``:

    g(x_i) = softmax(W_r x_i + b_r)                     (soft routing: every token uses every expert)
    y_i = sum_e g_e(x_i) * Attn_e(X)_i,   Attn_e(X) = softmax(Q_e K_e^T / sqrt(d)) V_e W_O^e

All experts run as one batched attention call (experts folded into the head axis). BAM initialises
the experts from the attention layers of separately trained dense specialists
(:meth:`SoftMixtureOfAttention.upcycle`); with shared key/value projections it keeps one key/value
projection for all experts (here: the experts' mean, or the seed model's when given).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from attnzoo.checks import check_divisible, check_tensor
from attnzoo.kernels.attention import attention, merge_heads, split_heads
from attnzoo.mechanisms.token_mixer.mhsa import MultiHeadSelfAttention

__all__ = ["LEDGER", "SoftMixtureOfAttention"]

LEDGER = (
    "Verified by equations and properties (no official-code fixture): one-hot gates or a saturated "
    "router reproduce that expert; soft gates give the gate-weighted sum of the experts.",
    "Upcycling with shared key/value projections uses the seed model's, or the experts' mean when no "
    "seed is given; the router starts at zero (uniform gates).",
    "Only the attention mixture is provided; BAM's FFN mixture-of-experts and parallel attention/FFN "
    "block are outside attnzoo's scope.",
)


class SoftMixtureOfAttention(nn.Module):
    """Soft-routed mixture of multi-head attention experts.

    ``forward(x (B, N, C), gates=None) -> (B, N, C)``; ``gates (B, N, E)`` overrides the router.

    Args:
        dim: channels ``C``.
        num_heads: heads per expert (must divide ``dim``).
        num_experts: experts ``E``.
        share_kv: one key/value projection shared by all experts (BAM's KV-sharing variant).
        qkv_bias: bias on the query/key/value projections.
        causal: mask future tokens.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_experts: int,
        *,
        share_kv: bool = False,
        qkv_bias: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        if int(num_experts) < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.dim, self.num_heads, self.num_experts = dim, num_heads, int(num_experts)
        self.share_kv, self.causal = bool(share_kv), bool(causal)
        e = self.num_experts
        self.q = nn.Linear(dim, e * dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, (1 if share_kv else e) * 2 * dim, bias=qkv_bias)
        self.proj_weight = nn.Parameter(torch.empty(e, dim, dim))
        self.proj_bias = nn.Parameter(torch.zeros(e, dim))
        self.router = nn.Linear(dim, e)
        for w in self.proj_weight:
            nn.init.kaiming_uniform_(w, a=5**0.5)

    def router_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, E)`` soft routing weights."""
        return self.router(x).softmax(dim=-1)

    def experts(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, E, C)``: every expert's attention output."""
        b, n, c = x.shape
        e, h = self.num_experts, self.num_heads
        q = split_heads(self.q(x), e * h)
        kv = self.kv(x).view(b, n, -1, 2, c)  # (B, N, E or 1, 2, C)
        k = split_heads(kv[..., 0, :].reshape(b, n, -1), kv.shape[2] * h)
        v = split_heads(kv[..., 1, :].reshape(b, n, -1), kv.shape[2] * h)
        if self.share_kv:
            k, v = k.repeat(1, e, 1, 1), v.repeat(1, e, 1, 1)
        out = attention(q, k, v, causal=self.causal)  # (B, E*h, N, d)
        out = merge_heads(out).view(b, n, e, c)
        return torch.einsum("bnec,eoc->bneo", out, self.proj_weight) + self.proj_bias

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        x = check_tensor(x, "x", ndim=3, shape=(None, None, self.dim))
        if gates is None:
            gates = self.router_probs(x)
        else:
            gates = check_tensor(gates, "gates", ndim=3, shape=(x.shape[0], x.shape[1], self.num_experts))
        return (self.experts(x) * gates.unsqueeze(-1)).sum(dim=2)

    @classmethod
    def upcycle(
        cls,
        experts: Sequence[MultiHeadSelfAttention],
        *,
        share_kv: bool = False,
        seed: MultiHeadSelfAttention | None = None,
    ) -> SoftMixtureOfAttention:
        """Build a mixture whose expert ``e`` is ``experts[e]`` (attnzoo ``mhsa`` layers of the dense
        specialists); with ``share_kv`` the shared key/value projection is ``seed``'s, or the
        experts' mean. The router starts at zero (uniform gates)."""
        if not experts:
            raise ValueError("upcycle needs at least one expert")
        first = experts[0]
        dim, heads = first.dim, first.num_heads
        if any(m.dim != dim or m.num_heads != heads or m.causal != first.causal for m in experts):
            raise ValueError("all experts must have the same dim, num_heads and causal setting")
        bias = first.qkv.bias is not None
        if any((m.qkv.bias is not None) != bias for m in experts):
            raise ValueError("experts disagree on qkv_bias")
        ref = first.qkv.weight
        moe = cls(dim, heads, len(experts), share_kv=share_kv, qkv_bias=bias, causal=first.causal)
        moe = moe.to(dtype=ref.dtype, device=ref.device)
        with torch.no_grad():
            w = [m.qkv.weight.view(3, dim, dim) for m in experts]
            moe.q.weight.copy_(torch.cat([t[0] for t in w]))
            if share_kv:
                kv = seed.qkv.weight.view(3, dim, dim)[1:] if seed is not None else torch.stack(w).mean(0)[1:]
                moe.kv.weight.copy_(kv.reshape(2 * dim, dim))
            else:
                moe.kv.weight.copy_(torch.cat([t[1:].reshape(2 * dim, dim) for t in w]))
            if bias:
                bs = [m.qkv.bias.view(3, dim) for m in experts]
                moe.q.bias.copy_(torch.cat([t[0] for t in bs]))
                if share_kv:
                    kvb = seed.qkv.bias.view(3, dim)[1:] if seed is not None else torch.stack(bs).mean(0)[1:]
                    moe.kv.bias.copy_(kvb.reshape(-1))
                else:
                    moe.kv.bias.copy_(torch.cat([t[1:].reshape(-1) for t in bs]))
            moe.proj_weight.copy_(torch.stack([m.proj.weight for m in experts]))
            moe.proj_bias.copy_(torch.stack([m.proj.bias for m in experts]))
            moe.router.weight.zero_()
            moe.router.bias.zero_()
        return moe

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_experts={self.num_experts}, "
            f"share_kv={self.share_kv}, causal={self.causal}"
        )
