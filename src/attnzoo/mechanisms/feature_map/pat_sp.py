"""PAT_sp: partial spatial attention (Zhang et al., "Partial Convolution Meets Visual Attention",
arXiv 2503.03148, PATNet's PAT_sp, placed after the MLP of each block).

The channels are split ``x = [x1 (C - C_p), x2 (C_p)]`` with ``C_p = floor(partial * C)``:

    a = hardsigmoid(W_a x1)            (1x1 conv to h maps; h = 1 shares one map over channels)
    out = [BN_1(x1 * a), W_c BN_2(x2)] (W_c a 1x1 conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_float, check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.registry import Card, register

__all__ = ["PartialSpatialAttention"]


@register(
    Card(
        name="pat_sp",
        aliases=("partial_spatial_attention", "pat_spatial"),
        family="feature_map",
        summary="Hard-sigmoid spatial map on part of the channels, 1x1 conv on the rest.",
        paper="Partial Convolution Meets Visual Attention",
        arxiv="2503.03148",
        year=2025,
        official_repo="haiduo/PartialNet",
        official_commit="679cfc0d6f54872686db308de0c4068ee7caf084",
        parity="official",
        parity_fixtures=("pat_partial_attention",),
        time_complexity="O(C H W h + C_p^2 H W)",
        memory_complexity="O(C H W)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "No PATNet repository exists; parity is against partial_spatial_attn_layer_reverse of "
            "haiduo/PartialNet (same first author), which implements PAT_sp.",
            "Attention part FIRST: x1 = the first C - floor(partial*C) channels are attended and the "
            "last floor(partial*C) get BN + 1x1 conv (the official '_reverse' order); PATNet uses "
            "partial=0.5, n_head=1.",
            "num_heads must be 1 or C - floor(partial*C) (the only values the official broadcast "
            "accepts); attnzoo raises otherwise.",
        ),
        tiny={"channels": 8, "partial": 0.5},
        sweep={"partial": (0.25, 0.5), "size": (2, 8)},
        bench={"channels": 64, "partial": 0.5, "equal_width": {"num_heads": 1}},
    )
)
class PartialSpatialAttention(FeatureMapAttention):
    """PAT_sp on ``x (B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: C.
        partial: fraction of the channels that get the 1x1 convolution (the rest are attended).
        num_heads: spatial maps; 1 (shared by all attended channels) or one per attended channel.
    """

    def __init__(self, channels: int, partial: float = 0.5, num_heads: int = 1) -> None:
        super().__init__()
        check_int(channels, "channels", minimum=2)
        check_int(num_heads, "num_heads")
        conv_channels = int(check_float(partial, "partial") * channels)
        if not 0 < conv_channels < channels:
            raise ValueError(
                f"partial={partial!r} must leave both parts non-empty: floor(partial * {channels}) "
                f"= {conv_channels}"
            )
        attn_channels = channels - conv_channels
        if num_heads not in (1, attn_channels):
            raise ValueError(f"num_heads must be 1 or {attn_channels} (attended channels), got {num_heads!r}")
        self.channels = channels
        self.conv_channels = conv_channels
        self.attn_channels = attn_channels
        self.num_heads = num_heads
        self.attn = nn.Conv2d(attn_channels, num_heads, 1, bias=False)
        self.attn_norm = nn.BatchNorm2d(attn_channels)
        self.conv_norm = nn.BatchNorm2d(conv_channels)
        self.conv = nn.Conv2d(conv_channels, conv_channels, 1, bias=False)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.split([self.attn_channels, self.conv_channels], dim=1)
        a = F.hardsigmoid(self.attn(x1))
        return torch.cat([self.attn_norm(x1 * a), self.conv(self.conv_norm(x2))], dim=1)
