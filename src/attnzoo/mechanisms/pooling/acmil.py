"""ACMIL: multiple-branch attention with stochastic top-K instance masking (Zhang et al.,
"Attention-Challenging Multiple Instance Learning for Whole Slide Image Classification", ECCV 2024).

Instances are embedded ``h_n = ReLU(W x_n)``; ``M`` gated-attention branches (Ilse et al., eq. 9)
give logits ``A_{m,n}``. In training, Stochastic Top-K Instance Masking (STKIM) drops, per bag and
branch, a random ``floor(K' * p)`` of the ``K' = min(K, N)`` highest logits (``p = mask_drop``).
Then ``a_m = softmax_n(A_m)``, branch features ``f_m = sum_n a_{m,n} h_n`` and the bag feature

    z = sum_n ( (1/M) sum_m a_{m,n} ) h_n = (1/M) sum_m f_m.

With ``num_classes`` set, each branch has a linear head on ``f_m`` and the bag a head on ``z``
(the paper's multi-branch classifier); :func:`acmil_diversity_loss` is its attention-diversity term.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.capture import module_scope
from attnzoo.checks import check_int, check_rate, check_tensor, tracing
from attnzoo.families import Pooling, PoolOutput
from attnzoo.mechanisms.pooling.attention_mil import InstanceAttentionScorer
from attnzoo.registry import Card, register

__all__ = ["ACMIL", "ACMILOutput", "acmil_diversity_loss"]


class ACMILOutput(NamedTuple):
    """Everything :meth:`ACMIL.classify` computes for a batch of bags.

    Attributes:
        branch_logits: ``(B, M, num_classes)`` one head per attention branch.
        bag_logits: ``(B, num_classes)`` head on the bag feature.
        attention_logits: ``(B, M, N)`` pre-softmax logits; padded and STKIM-dropped instances are -inf.
        attention: ``(B, M, N)`` softmax over instances of ``attention_logits``.
        pooled: ``(B, D_inner)`` bag feature.
    """

    branch_logits: torch.Tensor
    bag_logits: torch.Tensor
    attention_logits: torch.Tensor
    attention: torch.Tensor
    pooled: torch.Tensor


def acmil_diversity_loss(attention: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine similarity between the branches' attention maps.

    Args:
        attention: ``(B, M, N)`` softmaxed branch attention (``M >= 2``).

    Returns:
        ``(B,)`` the average over the ``M(M-1)/2`` branch pairs ``i < j`` of ``cos(a_i, a_j)``.
    """
    if attention.dim() != 3 or attention.shape[1] < 2:
        raise ValueError(f"attention must be (B, M, N) with M >= 2, got shape {tuple(attention.shape)}")
    a = F.normalize(attention, dim=-1)
    sim = a @ a.transpose(1, 2)
    m = attention.shape[1]
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool, device=attention.device), diagonal=1)
    return sim[:, upper].mean(dim=-1)


@register(
    Card(
        name="acmil",
        aliases=("acmil_ga", "attention_challenging_mil"),
        family="pooling",
        summary="Multi-branch gated attention MIL with stochastic top-K instance masking in training.",
        paper="Attention-Challenging Multiple Instance Learning for Whole Slide Image Classification",
        arxiv="2311.07125",
        year=2024,
        official_repo="dazhangyu123/ACMIL",
        official_commit="e53d19c81f3892256d41962ffc4352cc91a4f834",
        parity="official",
        parity_fixtures=("acmil",),
        time_complexity="O(N C D_inner + N D_inner D + N M D_inner)",
        memory_complexity="O(N D_inner + M N)",
        layouts=("BNC",),
        spatial_dims=0,
        ledger=(
            "The official ACMIL_GA takes x of shape (1, N, D_feat) and pools x[0] (one bag); attnzoo "
            "pools a padded batch (B, N, D_feat) with a key-padding mask, padded instances get weight "
            "exactly 0 and every bag gives the same result as alone.",
            "STKIM per bag uses K' = min(n_masked, number of PRESENT instances) and drops "
            "floor(K' * mask_drop) of them; the official code has no padding, so K' = min(n_masked, N).",
            "STKIM-dropped logits are -inf (weight exactly 0); the official code writes -1e9, which gives "
            "the same softmax (the official adapter restores -1e9 in its third output).",
            "STKIM draws its random choice from the module's `generator` (or the global RNG): one "
            "float32 uniform per (bag, branch, top-K slot), the lowest floor(K' p) slots dropped, as "
            "the official argsort(rand); a single bag drawn from the same RNG state drops the same "
            "instances as the official code.",
            "forward returns the bag feature z = mean_m(a_m) @ h (B, D_inner) and the per-branch attention "
            "(B, M, N); the official forward returns (branch logits, slide logits, pre-softmax logits), "
            "which attnzoo gives through classify() when num_classes is set.",
            "Classifier dropout (Classifier_1fc droprate) is applied to the features before each head, "
            "as officially; conf.n_token (stored but unused officially) has no counterpart.",
        ),
        tiny={"dim": 12, "hidden_dim": 8, "attn_dim": 8, "branches": 3},
        sweep={
            "dim": (4, 12),
            "hidden_dim": (4, 8),
            "attn_dim": (4, 8),
            "branches": (1, 2, 3),
            "size": (1, 9),
        },
        bench={
            "dim": 1024,
            "hidden_dim": 512,
            "attn_dim": 128,
            "branches": 5,
            "n_masked": 10,
            "mask_drop": 0.6,
        },
    )
)
class ACMIL(Pooling):
    """ACMIL pooling of ``x (B, N, C)`` with an optional ``mask (B, N)`` (True = present).

    Returns ``PoolOutput(pooled (B, hidden_dim), attention (B, branches, N))``.

    Args:
        dim: input instance width C (``D_feat``).
        hidden_dim: width of the embedded instances ``h`` (``D_inner``).
        attn_dim: hidden width D of the gated attention network.
        branches: number M of attention branches (the official ``n_token`` argument).
        n_masked: top-K size of STKIM (0 disables it).
        mask_drop: fraction of the top-K dropped in training, in ``[0, 1)``.
        num_classes: when set, builds the branch and bag classifier heads used by :meth:`classify`.
        dropout: dropout on the features before each classifier head (training only).
        generator: RNG for STKIM; ``None`` uses the global RNG.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 512,
        attn_dim: int = 128,
        branches: int = 5,
        *,
        n_masked: int = 0,
        mask_drop: float = 0.0,
        num_classes: int | None = None,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        sizes = {"dim": dim, "hidden_dim": hidden_dim, "attn_dim": attn_dim, "branches": branches}
        for name, value in sizes.items():
            check_int(value, name)
        check_int(n_masked, "n_masked", minimum=0)
        check_rate(mask_drop, "mask_drop")
        if num_classes is not None:
            check_int(num_classes, "num_classes")
        check_rate(dropout, "dropout")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.branches = branches
        self.n_masked = n_masked
        self.mask_drop = float(mask_drop)
        self.num_classes = num_classes
        self.generator = generator
        self.embed = nn.Linear(dim, hidden_dim, bias=False)
        self.attention = InstanceAttentionScorer(hidden_dim, attn_dim, branches, gated=True)
        self.head_drop = nn.Dropout(dropout)
        if num_classes is not None:
            self.branch_heads = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(branches))
            self.bag_head = nn.Linear(hidden_dim, num_classes)
        else:
            self.branch_heads = None
            self.bag_head = None

    def stkim_keep(self, logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Stochastic top-K instance masking: bool ``(B, M, N)``, False = dropped or padded.

        Applied only in training with ``n_masked > 0 and mask_drop > 0``; otherwise only padding drops.
        """
        b, m, n = logits.shape
        present = torch.ones(b, n, dtype=torch.bool, device=logits.device) if mask is None else mask
        keep = present[:, None, :].expand(b, m, n)
        if not (self.training and self.n_masked > 0 and self.mask_drop > 0.0):
            return keep
        top = min(self.n_masked, n)
        ranked = logits.detach().masked_fill(~keep, float("-inf")).topk(top, dim=-1).indices
        n_eff = present.sum(dim=1).clamp(max=top)
        n_drop = torch.floor(n_eff.to(torch.float64) * self.mask_drop).to(torch.long)
        device = self.generator.device if self.generator is not None else logits.device
        u = torch.rand(b, m, top, generator=self.generator, device=device)
        slot = torch.arange(top, device=logits.device)
        u = u.to(logits.device).masked_fill(slot >= n_eff[:, None, None], 2.0)
        order = u.argsort(dim=-1).argsort(dim=-1)
        drop_slot = order < n_drop[:, None, None]
        dropped = torch.zeros(b, m, n, dtype=torch.bool, device=logits.device)
        dropped.scatter_(-1, ranked, drop_slot)
        return keep & ~dropped

    def _forward_parts(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h = torch.relu(self.embed(x))
        logits = self.attention(h)
        keep = self.stkim_keep(logits, mask)
        feats, attn = self.attention.pool(h, h, keep)
        return h, logits.masked_fill(~keep, float("-inf")), feats, attn

    def compute(self, x: torch.Tensor, mask: torch.Tensor | None) -> PoolOutput:
        _, _, feats, attn = self._forward_parts(x, mask)
        return PoolOutput(feats.mean(dim=1), attn)

    def classify(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> ACMILOutput:
        """Branch and bag logits (the official forward, batched); needs ``num_classes``.

        Args:
            x: ``(B, N, C)`` bags of instances.
            mask: bool ``(B, N)``, True = present instance.
        """
        if self.branch_heads is None or self.bag_head is None:
            raise ValueError("classify() needs the classifier heads: build ACMIL with num_classes=...")
        check_tensor(x, "x", ndim=3, shape=(None, None, self.dim))
        if mask is not None:
            check_tensor(mask, "mask", shape=(x.shape[0], x.shape[1]), floating=False, finite=False)
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must be a bool tensor (True = present), got dtype {mask.dtype}")
            if not tracing() and not bool(mask.any(dim=1).all()):
                raise ValueError("mask leaves a bag with no instance: every row needs at least one True")
        with module_scope(self):
            _, logits, feats, attn = self._forward_parts(x, mask)
        branch = torch.stack(
            [head(self.head_drop(feats[:, i])) for i, head in enumerate(self.branch_heads)], dim=1
        )
        pooled = feats.mean(dim=1)
        return ACMILOutput(branch, self.bag_head(self.head_drop(pooled)), logits, attn, pooled)
