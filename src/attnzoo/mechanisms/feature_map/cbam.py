"""Convolutional Block Attention Module (Woo et al., "CBAM: Convolutional Block Attention Module",
ECCV 2018, arXiv 1807.06521, eq. 1-3).

Channel attention, then spatial attention, each a sigmoid gate::

    M_c = sigmoid(MLP(AvgPool(x)) + MLP(MaxPool(x)))        (B, C, 1, 1), shared MLP C -> C/r -> C
    x'  = M_c * x
    M_s = sigmoid(f_kxk([MaxPool_c(x'); AvgPool_c(x')]))    (B, 1, H, W), pools across channels
    out = M_s * x'

A baseline beside SE (``se``): SE is the channel half with average pooling only.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.registry import Card, register

__all__ = ["CBAM"]


@register(
    Card(
        name="cbam",
        aliases=("convolutional_block_attention",),
        family="feature_map",
        summary="Channel gate from avg+max pooled MLP, then spatial gate from a kxk conv on channel pools.",
        paper="CBAM: Convolutional Block Attention Module",
        arxiv="1807.06521",
        year=2018,
        official_repo="Jongchan/attention-module",
        parity="equations",
        time_complexity="O(C H W + C^2 / r + k^2 H W)",
        memory_complexity="O(C H W)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "Follows the paper's eq. 1-3 by default; the official code adds a BatchNorm (eps 1e-5, momentum "
            "0.01, affine) after the 7x7 spatial convolution: spatial_bn=True reproduces it, and "
            "attnzoo.official.load('cbam', ...) converts official checkpoints.",
            "Channel-pool order is the official [max, mean] (the paper writes [avg; max]); it only fixes the "
            "layout of the spatial conv weight, chosen so official weights load unchanged.",
            "Hidden width is max(min_channels, C // r): the official MLP has 0 hidden units for C < r.",
            "The official pool_types also offer 'lp' and 'lse'; only the paper's avg+max is provided.",
        ),
        tiny={"channels": 8, "reduction": 4, "kernel_size": 3},
        sweep={
            "channels": (4, 8, 16),
            "reduction": (2, 4),
            "kernel_size": (3, 5, 7),
            "spatial": (True, False),
            "spatial_bn": (False, True),
            "size": (1, 8),
        },
        bench={"channels": 64, "reduction": 16},
    )
)
class CBAM(FeatureMapAttention):
    """CBAM on ``x (B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        channels: C.
        reduction: MLP bottleneck ratio r.
        kernel_size: odd spatial kernel k (7 in the paper).
        spatial: apply the spatial gate (``False`` = the official ``no_spatial=True``).
        spatial_bn: BatchNorm after the spatial convolution (official code, not the paper).
        min_channels: lower bound of the MLP hidden width.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        *,
        kernel_size: int = 7,
        spatial: bool = True,
        spatial_bn: bool = False,
        min_channels: int = 1,
    ) -> None:
        super().__init__()
        check_int(channels, "channels")
        check_int(reduction, "reduction")
        check_int(min_channels, "min_channels")
        if check_int(kernel_size, "kernel_size") % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        check_bool(spatial, "spatial")
        check_bool(spatial_bn, "spatial_bn")
        self.channels = channels
        hidden = max(min_channels, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial: nn.Conv2d | None = None
        self.spatial_bn: nn.Module | None = None
        if spatial:
            self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
            if spatial_bn:
                self.spatial_bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """``M_c (B, C)``."""

        def mlp(v: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(v)))

        return torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """``M_s (B, 1, H, W)`` of the (channel-gated) map ``x``."""
        if self.spatial is None:
            raise ValueError("spatial_gate needs a module built with spatial=True")
        s = self.spatial(torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1))
        if self.spatial_bn is not None:
            s = self.spatial_bn(s)
        return torch.sigmoid(s)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_gate(x)[:, :, None, None]
        if self.spatial is None:
            return x
        return x * self.spatial_gate(x)
