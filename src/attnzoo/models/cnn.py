"""A small CNN with a pluggable feature-map attention after each stage (the way SE, ECA, CBAM
and their kin are inserted into ResNets, at toy scale).

``stage_i = [conv3x3 -> BN -> ReLU] x 2 -> attention(channels_i)``; stages are separated by 2x2
max pooling; ``global average pool -> linear head``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from attnzoo.checks import check_tensor
from attnzoo.models.build import build_mechanism

__all__ = ["SmallCNN"]


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """``images (B, C_in, H, W) -> logits (B, num_classes)``.

    Args:
        in_chans: input channels.
        num_classes: outputs.
        widths: channels of each stage.
        attention: registered name of a 2-D feature-map attention, or ``None`` for the plain CNN.
        attention_overrides: constructor kwargs replacing the card's ``bench`` values.
    """

    HOSTS: ClassVar[dict[str, Any]] = {"family": "feature_map", "spatial_dims": 2}
    """What the model hosts, as :func:`attnzoo.models.build.refusal` takes it."""

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        widths: Sequence[int] = (16, 32),
        attention: str | None = None,
        *,
        attention_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one stage")
        self.in_chans = in_chans
        stages = []
        cin = in_chans
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [*_conv_bn_relu(cin, w), *_conv_bn_relu(w, w)]
            if attention is not None:
                layers.append(build_mechanism(attention, w, **self.HOSTS, overrides=attention_overrides))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor(images, "images", ndim=4)
        if images.shape[1] != self.in_chans:
            raise ValueError(f"images must have {self.in_chans} channels, got shape {tuple(images.shape)}")
        return self.head(self.stages(images).mean(dim=(2, 3)))
