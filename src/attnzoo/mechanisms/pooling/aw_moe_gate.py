"""Attention-weighted expert gate of AW-MoE (Gong et al., "Attention Weighted Mixture of Experts
with Contrastive Learning for Personalized Ranking in E-commerce", ICDE 2023, arXiv 2306.05011).

The gate network reads the user's behaviour sequence ``e_1..e_N`` and the current query/item
``q``: a *gate unit* gives every behaviour a vector of expert logits and an *activation unit*
(DIN-style local activation) weighs each behaviour by its relevance to ``q``; the weighted sum
of the per-behaviour gate vectors, normalised over the ``K`` experts, activates the experts:

    g_i = W_g2 relu(W_g1 e_i + b_g1) + b_g2                      (gate unit, R^K)
    a_i = w_a2^T relu(W_a1 [e_i, q, e_i - q, e_i * q] + b_a1) + b_a2   (activation unit)
    w = softmax_K( sum_i a_i g_i ).

Padded behaviours (``mask`` False) get ``a_i = 0`` exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnzoo.checks import check_int, check_tensor
from attnzoo.families import Pooling, PoolOutput
from attnzoo.registry import Card, register

__all__ = ["AWMoEGate"]


@register(
    Card(
        name="aw_moe_gate",
        aliases=("aw_moe", "attention_weighted_moe_gate"),
        family="pooling",
        summary="Expert weights from behaviour-wise gate vectors pooled by DIN-style query activation.",
        paper="Attention Weighted Mixture of Experts with Contrastive Learning for Personalized Ranking "
        "in E-commerce",
        arxiv="2306.05011",
        year=2023,
        parity="equations",
        time_complexity="O(N C (H_g + 4 H_a) + N H_g K)",
        memory_complexity="O(N (H_g + H_a + K))",
        layouts=("BNC",),
        spatial_dims=1,
        extra_inputs=("query",),
        ledger=(
            "No official code is public; attnzoo follows the paper's gate network (gate unit + "
            "activation unit, attention-weighted sum of per-behaviour expert vectors, softmax over "
            "experts). The paper's full text was not available while this was written: the layer widths, "
            "activations (ReLU here; DIN uses PReLU/Dice) and the absence of a softmax over behaviours "
            "are DIN conventions, to be checked against Sec. III of the paper.",
            "The query/item embedding q is a forward argument (query=, shape (B, C)); the Pooling "
            "contract is kept for x and mask, pooled = the expert weights (B, K), attention = a (B, N).",
            "The training-time random masking of behaviours and the contrastive loss on the gate output "
            "are training recipe, not part of this module (mask= expresses any masking).",
        ),
        tiny={"dim": 8, "num_experts": 3, "gate_hidden": 8, "attn_hidden": 8},
        sweep={
            "dim": (4, 8),
            "num_experts": (1, 2, 3),
            "gate_hidden": (4, 8),
            "attn_hidden": (4, 8),
            "size": (1, 10),
        },
        bench={"dim": 64, "num_experts": 8, "gate_hidden": 64, "attn_hidden": 64},
    )
)
class AWMoEGate(Pooling):
    """AW-MoE gate: behaviours ``x (B, N, C)``, ``query (B, C)``, ``mask (B, N)`` -> expert weights.

    Returns ``PoolOutput(pooled = w (B, K), attention = a (B, N))``.

    Args:
        dim: behaviour (and query) embedding width C.
        num_experts: K.
        gate_hidden: hidden width of the gate unit.
        attn_hidden: hidden width of the activation unit.
    """

    def __init__(self, dim: int, num_experts: int, gate_hidden: int = 64, attn_hidden: int = 64) -> None:
        super().__init__()
        for name, value in (
            ("dim", dim),
            ("num_experts", num_experts),
            ("gate_hidden", gate_hidden),
            ("attn_hidden", attn_hidden),
        ):
            check_int(value, name)
        self.dim = dim
        self.num_experts = num_experts
        self.gate_unit = nn.Sequential(
            nn.Linear(dim, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, num_experts)
        )
        self.activation_unit = nn.Sequential(
            nn.Linear(4 * dim, attn_hidden), nn.ReLU(), nn.Linear(attn_hidden, 1)
        )

    def example_kwargs(
        self,
        batch: int,
        size: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device | str | None,
        generator: torch.Generator | None,
    ) -> dict[str, Any]:
        """A random ``query (B, C)`` for the conformance suite."""
        q = torch.randn(batch, self.dim, generator=generator, dtype=torch.float32)
        return {"query": q.to(device=device, dtype=dtype)}

    def activation(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Activation-unit weights ``a (B, N)`` (unmasked)."""
        q = query[:, None, :].expand_as(x)
        return self.activation_unit(torch.cat([x, q, x - q, x * q], dim=-1)).squeeze(-1)

    def compute(  # type: ignore[override]
        self, x: torch.Tensor, mask: torch.Tensor | None, query: torch.Tensor | None = None
    ) -> PoolOutput:
        if query is None:
            raise ValueError("query is required: pass query=(B, C), the current query/item embedding")
        check_tensor(query, "query", ndim=2)
        if tuple(query.shape) != (x.shape[0], self.dim):
            raise ValueError(f"query must have shape {(x.shape[0], self.dim)}, got {tuple(query.shape)}")
        a = self.activation(x, query.to(x.dtype))
        if mask is not None:
            a = a.masked_fill(~mask, 0.0)
        logits = torch.einsum("bn,bnk->bk", a, self.gate_unit(x))
        return PoolOutput(logits.softmax(dim=-1), a)
