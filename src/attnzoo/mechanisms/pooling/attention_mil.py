"""Attention-based MIL pooling (Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance
Learning", ICML 2018, eq. 8-9).

A bag of instance embeddings ``h_1..h_N`` is pooled as ``z = sum_n a_n h_n`` with

    a_n = softmax_n( w^T tanh(V h_n) )                               (attention, eq. 8)
    a_n = softmax_n( w^T (tanh(V h_n) * sigmoid(U h_n)) )             (gated attention, eq. 9)

``K`` rows of ``w`` give ``K`` attention branches whose pooled vectors are concatenated
(``z in R^{K L}``, as the authors' ``Attention``/``GatedAttention`` models feed ``L*K`` features to
the classifier). The score ``w^T k_n + b`` is a dot product of a learned query ``w`` with the key
``k_n = tanh(V h_n) [* sigmoid(U h_n)]``, so the pooling runs through
:func:`attnzoo.kernels.attention_reference` with ``scale = 1`` and ``b`` as additive bias (constant
over instances, it cancels in the softmax but is kept so the scores are the official logits).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_int
from attnzoo.families import Pooling, PoolOutput
from attnzoo.kernels import attention_reference
from attnzoo.registry import Card, register

__all__ = ["AttentionMIL", "InstanceAttentionScorer"]


class InstanceAttentionScorer(nn.Module):
    """The (gated) attention network of Ilse et al.: ``(B, N, L) -> `` logits ``(B, K, N)``.

    Args:
        dim: instance width L.
        attn_dim: hidden width D of ``V`` (and ``U``).
        branches: attention branches K (rows of ``w``).
        gated: use the gated form (eq. 9) instead of eq. 8.
    """

    def __init__(self, dim: int, attn_dim: int, branches: int = 1, *, gated: bool = True) -> None:
        super().__init__()
        self.branches = branches
        self.gated = gated
        self.proj_v = nn.Linear(dim, attn_dim)
        self.proj_u = nn.Linear(dim, attn_dim) if gated else None
        self.score = nn.Linear(attn_dim, branches)

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """``k_n = tanh(V h_n) [* sigmoid(U h_n)]``: ``(B, N, L) -> (B, N, D)``."""
        k = torch.tanh(self.proj_v(x))
        if self.proj_u is not None:
            k = k * torch.sigmoid(self.proj_u(x))
        return k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax logits ``w^T k_n + b``, ``(B, N, L) -> (B, K, N)``."""
        return self.score(self.keys(x)).transpose(1, 2)

    def pool(
        self, x: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over instances of the logits of ``x``, applied to ``values``.

        Args:
            x: ``(B, N, L)`` instances the attention is computed from.
            values: ``(B, N, C)`` what is pooled.
            keep: bool ``(B, N)`` or ``(B, K, N)``, False = weight exactly 0, or ``None``.

        Returns:
            ``pooled (B, K, C)`` and ``attention (B, K, N)`` (rows sum to one).
        """
        b, n = x.shape[:2]
        q = self.score.weight.to(x.dtype)[None, None]
        bias = self.score.bias.to(x.dtype)[None, None, :, None].expand(b, 1, self.branches, n)
        mask = None
        if keep is not None:
            mask = keep[:, None, None, :] if keep.dim() == 2 else keep[:, None]
        out, probs = attention_reference(
            q, self.keys(x)[:, None], values[:, None], mask=mask, bias=bias, scale=1.0, return_weights=True
        )
        return out[:, 0], probs[:, 0]


@register(
    Card(
        name="attention_mil",
        aliases=("abmil", "gated_attention_mil", "attention_mil_pooling"),
        family="pooling",
        summary="MIL pooling: softmax over instances of a learned (gated) tanh score, weighted sum.",
        paper="Attention-based Deep Multiple Instance Learning",
        arxiv="1802.04712",
        year=2018,
        official_repo="dazhangyu123/ACMIL",
        official_commit="e53d19c81f3892256d41962ffc4352cc91a4f834",
        parity="official",
        parity_fixtures=("gated_attention_mil",),
        time_complexity="O(N C D + N D K + N K C)",
        memory_complexity="O(N D + K N)",
        layouts=("BNC",),
        spatial_dims=0,
        ledger=(
            "Parity is against the gated attention network as shipped in the ACMIL repository "
            "(Attention_Gated, also CLAM's Attn_Net_Gated); the authors' own AMLab-Amsterdam/"
            "AttentionDeepMIL code is the same equation with K=1 and its feature extractor in front.",
            "The official modules return pre-softmax logits (K, N) for ONE bag; attnzoo pools a padded "
            "batch (B, N, L) with a key-padding mask (padded instances get weight exactly 0, every bag "
            "equals the bag alone) and returns PoolOutput; the logits are InstanceAttentionScorer(x).",
            "With K > 1 branches the pooled vector is the concatenation of the K branch vectors "
            "(B, K*L), as the paper's model feeds L*K features to its classifier; the attention output "
            "is (B, N) for K=1 and (B, K, N) otherwise.",
            "gated=False gives the paper's plain attention (eq. 8); the official ACMIL file only "
            "ships the gated form. No dropout: CLAM's Attn_Net_Gated(dropout=True) adds Dropout(0.25) "
            "after tanh and sigmoid, which attnzoo does not model.",
        ),
        tiny={"dim": 12, "attn_dim": 8, "branches": 2},
        sweep={
            "dim": (4, 12),
            "attn_dim": (4, 8),
            "branches": (1, 2, 3),
            "gated": (True, False),
            "size": (1, 10),
        },
        bench={"dim": 512, "attn_dim": 128, "branches": 1},
    )
)
class AttentionMIL(Pooling):
    """Attention-MIL pooling of ``x (B, N, L)`` with an optional ``mask (B, N)`` (True = present).

    Returns ``PoolOutput(pooled (B, K*L), attention (B, N) if K == 1 else (B, K, N))``.

    Args:
        dim: instance width L.
        attn_dim: hidden width D of the attention network.
        branches: number K of attention branches.
        gated: gated attention (eq. 9, default) or plain tanh attention (eq. 8).
    """

    def __init__(self, dim: int, attn_dim: int = 128, branches: int = 1, *, gated: bool = True) -> None:
        super().__init__()
        self.dim = check_int(dim, "dim")
        self.attn_dim = check_int(attn_dim, "attn_dim")
        self.branches = check_int(branches, "branches")
        check_bool(gated, "gated")
        self.attention = InstanceAttentionScorer(dim, attn_dim, branches, gated=gated)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax attention logits ``(B, K, N)`` (what the official module returns)."""
        return self.attention(x)

    def compute(self, x: torch.Tensor, mask: torch.Tensor | None) -> PoolOutput:
        pooled, attn = self.attention.pool(x, x, mask)
        if self.branches == 1:
            return PoolOutput(pooled[:, 0], attn[:, 0])
        return PoolOutput(pooled.flatten(1), attn)
