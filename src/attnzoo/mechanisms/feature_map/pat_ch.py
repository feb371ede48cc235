"""PAT_ch: partial convolution with partial channel attention (Zhang et al., "Partial Convolution
Meets Visual Attention", arXiv 2503.03148, PATNet's PAT_ch mixer).

The channels are split ``x = [x1 (C/n), x2 (C - C/n)]``; ``x1`` goes through a 3x3 convolution and
``x2`` through an SRM-style channel attention (style pooling by mean and standard deviation):

    u = [mean_{HW}(x2), std_{HW}(x2)]               (unbiased std)
    g = hardsigmoid(BN(W u))                        (W mixes all channels of both statistics)
    out = [Conv3x3(x1), BN_out(x2 * g)].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.registry import Card, register

__all__ = ["PartialChannelAttention"]


def _check_n_div(channels: int, n_div: int) -> None:
    check_int(channels, "channels", minimum=2)
    if check_int(n_div, "n_div", minimum=2) > channels:
        raise ValueError(f"n_div must be an int in [2, channels={channels}], got {n_div!r}")


@register(
    Card(
        name="pat_ch",
        aliases=("partial_channel_attention", "pat_channel"),
        family="feature_map",
        summary="Partial 3x3 conv on C/n channels, SRM-style mean/std channel attention on the rest.",
        paper="Partial Convolution Meets Visual Attention",
        arxiv="2503.03148",
        year=2025,
        official_repo="haiduo/PartialNet",
        official_commit="679cfc0d6f54872686db308de0c4068ee7caf084",
        parity="official",
        parity_fixtures=("pat_partial_attention",),
        time_complexity="O(9 C^2 H W / n^2 + C H W + C^2)",
        memory_complexity="O(C H W)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "No PATNet repository exists; parity is against Partial_conv3(use_attn=True, "
            "channel_type='se') of haiduo/PartialNet (same first author), which implements PAT_ch.",
            "The style-integration layer is a DENSE Conv2d(C', C', kernel (1, 2)) in the official code "
            "(the SRM paper uses a channel-wise one); attnzoo stores it as Linear(2C', C') on "
            "[mean, std] (the converter reshapes the kernel).",
            "The gate is hardsigmoid (relu6(z + 3) / 6) as officially, not SRM's sigmoid.",
            "The std is unbiased, so H*W = 1 has no std: the official code returns NaN, attnzoo "
            "raises ValueError.",
            "The block's residual and MLP (PartialNet MLPBlock) are not part of this mechanism.",
        ),
        tiny={"channels": 8, "n_div": 4},
        sweep={"n_div": (2, 4), "size": (2, 8)},
        bench={"channels": 64, "n_div": 4},
    )
)
class PartialChannelAttention(FeatureMapAttention):
    """PAT_ch on ``x (B, C, H, W) -> (B, C, H, W)``; needs ``H * W >= 2``.

    Args:
        channels: C.
        n_div: the first ``C // n_div`` channels are convolved, the rest are attended.
    """

    def __init__(self, channels: int, n_div: int = 4) -> None:
        super().__init__()
        _check_n_div(channels, n_div)
        self.channels = channels
        self.conv_channels = channels // n_div
        self.attn_channels = channels - self.conv_channels
        c1, c2 = self.conv_channels, self.attn_channels
        self.partial_conv = nn.Conv2d(c1, c1, 3, padding=1, bias=False)
        self.style_fc = nn.Linear(2 * c2, c2, bias=False)
        self.style_bn = nn.BatchNorm1d(c2)
        self.norm = nn.BatchNorm2d(c2)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h * w < 2:
            raise ValueError(f"x needs at least 2 positions for the std statistic, got size {(h, w)}")
        x1, x2 = x.split([self.conv_channels, self.attn_channels], dim=1)
        flat = x2.flatten(2)
        u = torch.cat([flat.mean(dim=-1), flat.std(dim=-1)], dim=-1)
        g = F.hardsigmoid(self.style_bn(self.style_fc(u)))
        return torch.cat([self.partial_conv(x1), self.norm(x2 * g[:, :, None, None])], dim=1)
