"""Squeeze-and-excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, eq. 2-4).

``s = sigmoid(W_2 relu(W_1 GAP(x)))`` and ``out = x * s`` per channel, with ``W_1: C -> C/r``.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.registry import Card, register

__all__ = ["SqueezeExcitation"]


@register(
    Card(
        name="se",
        aliases=("squeeze_excitation",),
        family="feature_map",
        summary="Channel reweighting from a bottleneck MLP on globally pooled features.",
        paper="Squeeze-and-Excitation Networks",
        arxiv="1709.01507",
        year=2018,
        official_repo="hujie-frank/SENet",
        parity="equations",
        time_complexity="O(C H W + C^2 / r)",
        memory_complexity="O(C H W)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "Official code is Caffe; attnzoo follows the paper's equations with 1x1 convolutions "
            "(equivalent to the FC layers) and biases, as in torchvision/timm.",
            "Hidden width is max(min_channels, C // reduction) so tiny C never yields 0 channels.",
        ),
        tiny={"channels": 8, "reduction": 4},
        sweep={"channels": (4, 8, 16), "reduction": (2, 4), "size": (1, 8)},
        bench={"channels": 64, "reduction": 16},
    )
)
class SqueezeExcitation(FeatureMapAttention):
    """SE block on ``x (B, C, H, W)``.

    Args:
        channels: C.
        reduction: bottleneck ratio r.
        min_channels: lower bound of the hidden width.
    """

    def __init__(self, channels: int, reduction: int = 16, *, min_channels: int = 1) -> None:
        super().__init__()
        check_int(channels, "channels")
        check_int(reduction, "reduction")
        check_int(min_channels, "min_channels")
        self.channels = channels
        hidden = max(min_channels, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s
