"""A multiple-instance-learning classifier with pluggable pooling (Ilse, Tomczak & Welling,
"Attention-based Deep Multiple Instance Learning", ICML 2018, arXiv:1802.04712).

``bag of images -> shared CNN instance encoder -> embeddings (B, M, D) -> pooling(mask) ->
bag embedding -> linear -> one bag logit``; the pooling's attention weights are returned too, so
instance-level localisation can be inspected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from attnzoo.checks import check_tensor
from attnzoo.models.build import build_mechanism

__all__ = ["MILClassifier"]


class MILClassifier(nn.Module):
    """``bags (B, M, C, H, W), mask (B, M) -> (logits (B,), attention (B, ..., M))``.

    Args:
        in_chans: channels of an instance image.
        dim: embedding width D (replaces the pooling card's ``dim``).
        pooling: registered name of a pooling mechanism.
        pooling_overrides: constructor kwargs replacing the card's ``bench`` values.
    """

    HOSTS: ClassVar[dict[str, Any]] = {"family": "pooling"}
    """What the model hosts, as :func:`attnzoo.models.build.refusal` takes it."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        pooling: str,
        *,
        pooling_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.encoder = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, dim),
            nn.ReLU(inplace=True),
        )
        self.pooling = build_mechanism(pooling, dim, **self.HOSTS, overrides=pooling_overrides)
        was_training = self.pooling.training
        self.pooling.eval()
        try:
            with torch.no_grad():
                pooled_dim = self.pooling(torch.zeros(1, 2, dim)).pooled.shape[-1]
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"pooling {pooling!r} cannot be used in MILClassifier, which calls it as "
                f"pooling(instances, mask=mask): {exc}"
            ) from exc
        self.pooling.train(was_training)
        self.head = nn.Linear(pooled_dim, 1)

    def forward(
        self, bags: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor(bags, "bags", ndim=5)
        if bags.shape[2] != self.in_chans:
            raise ValueError(f"bags must have {self.in_chans} channels on dim 2, got {tuple(bags.shape)}")
        b, m = bags.shape[:2]
        emb = self.encoder(bags.flatten(0, 1)).view(b, m, -1)
        out = self.pooling(emb, mask=mask)
        return self.head(out.pooled).squeeze(-1), out.attention
