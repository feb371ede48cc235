"""Efficient Local Attention (Xu & Wan, "ELA: Efficient Local Attention for Deep Convolutional Neural
Networks", arXiv 2403.01123, 2024, eq. 5-7).

Strip-pool the map along each axis, encode each strip with a 1-D convolution and GroupNorm, and gate::

    z_h = mean_W(x)  (B, C, H),          z_w = mean_H(x)  (B, C, W)
    y_h = sigmoid(GN(Conv1d_k(z_h))),    y_w = sigmoid(GN(Conv1d_k(z_w)))
    out = x * y_h[..., :, None] * y_w[..., None, :]

The four versions of the paper's table fix three hyper-parameters (1-D kernel ``k``, convolution
groups, GroupNorm groups):

=======  ===  =================  =========
variant  k    conv groups        GN groups
=======  ===  =================  =========
T        5    C (depthwise)      32
B        7    C (depthwise)      16
S        5    C / 8              16
L        7    C / 8              16
=======  ===  =================  =========
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.registry import Card, register

__all__ = ["ELA_VARIANTS", "EfficientLocalAttention"]

#: variant -> (kernel size, channels per convolution group, GroupNorm groups)
ELA_VARIANTS: dict[str, tuple[int, int, int]] = {
    "T": (5, 1, 32),
    "B": (7, 1, 16),
    "S": (5, 8, 16),
    "L": (7, 8, 16),
}


@register(
    Card(
        name="ela",
        aliases=("efficient_local_attention",),
        family="feature_map",
        summary="Coordinate gates from strip-pooled rows/columns via 1-D conv + GroupNorm, no reduction.",
        paper="ELA: Efficient Local Attention for Deep Convolutional Neural Networks",
        arxiv="2403.01123",
        year=2024,
        official_repo=None,
        parity="equations",
        time_complexity="O(C H W + C k (H + W) / g_c)  (g_c channels per conv group)",
        memory_complexity="O(C H W)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "No official code: follows the paper's equations and its T/B/S/L table; one registration "
            "`ela` with variant='T'|'B'|'S'|'L' (default 'B'); kernel_size/conv_group_channels/gn_groups "
            "override the table.",
            "Shared convolution: the paper's listing (and the widely copied copies of it) applies ONE "
            "Conv1d and ONE GroupNorm to both the H strip and the W strip; attnzoo does the same by "
            "default (shared=True); shared=False gives each axis its own conv+GN (2x parameters).",
            "GroupNorm groups: the widely copied listing hard-codes GroupNorm(16, C) and k=7 depthwise "
            "(= ELA-B) whatever the variant, and several copies set Conv1d groups=32 instead of groups=C; "
            "attnzoo takes k, conv groups and GN groups from the variant table.",
            "timm's EfficientLocalAttn (timm/layers/coord_attn.py) differs from the paper: separate "
            "depthwise (k,1)/(1,k) Conv2d per axis (like shared=False), GroupNorm1 (1 group) per axis, "
            "an extra SiLU between norm and sigmoid, and an optional skip; attnzoo has no SiLU, so timm "
            "weights do not reproduce timm outputs here.",
            "Some copies reshape the W gate to (B, C, W, 1) instead of (B, C, 1, W), which only runs for "
            "square maps and then applies the column gate along rows; attnzoo gates rows with y_h and "
            "columns with y_w.",
            "Channels must be divisible by the GroupNorm groups (and by 8 for S/L); attnzoo raises a "
            "ValueError naming the argument instead of failing inside GroupNorm.",
        ),
        tiny={"channels": 16, "variant": "B"},
        sweep={"shared": (True, False), "size": (2, 8)},
        bench={
            "channels": 64,
            "variant": "B",
            "variants": {v: {"variant": v} for v in ("T", "B", "S", "L")},
        },
    )
)
class EfficientLocalAttention(FeatureMapAttention):
    """ELA on ``x (B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        channels: C.
        variant: ``"T"``, ``"B"``, ``"S"`` or ``"L"`` (the paper's table).
        kernel_size: odd 1-D kernel size, overriding the variant's.
        conv_group_channels: channels per convolution group (1 = depthwise), overriding the variant's.
        gn_groups: GroupNorm groups, overriding the variant's.
        shared: one convolution + GroupNorm (``conv``, ``gn``) for both axes, as in the paper's
            listing; ``False`` adds ``conv_w``, ``gn_w`` for the W strip (``conv``, ``gn`` then
            serve the H strip only).
    """

    def __init__(
        self,
        channels: int,
        variant: str = "B",
        *,
        kernel_size: int | None = None,
        conv_group_channels: int | None = None,
        gn_groups: int | None = None,
        shared: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(variant, str) or variant.upper() not in ELA_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(ELA_VARIANTS)}, got {variant!r}")
        k, per_group, groups = ELA_VARIANTS[variant.upper()]
        k = k if kernel_size is None else check_int(kernel_size, "kernel_size")
        per_group = per_group if conv_group_channels is None else conv_group_channels
        groups = groups if gn_groups is None else gn_groups
        check_int(channels, "channels")
        check_bool(shared, "shared")
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {k!r}")
        check_divisible(channels, per_group, "channels", "conv_group_channels")
        check_divisible(channels, groups, "channels", "gn_groups")
        self.channels = channels
        self.variant = variant.upper()
        self.kernel_size = k
        self.shared = shared
        self.conv = nn.Conv1d(channels, channels, k, padding=k // 2, groups=channels // per_group, bias=False)
        self.gn = nn.GroupNorm(groups, channels)
        self.conv_w: nn.Conv1d | None = None
        self.gn_w: nn.GroupNorm | None = None
        if not shared:
            self.conv_w = nn.Conv1d(
                channels, channels, k, padding=k // 2, groups=channels // per_group, bias=False
            )
            self.gn_w = nn.GroupNorm(groups, channels)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The row gate ``(B, C, H)`` and the column gate ``(B, C, W)``."""
        conv_w = self.conv if self.conv_w is None else self.conv_w
        gn_w = self.gn if self.gn_w is None else self.gn_w
        y_h = torch.sigmoid(self.gn(self.conv(x.mean(dim=3))))
        y_w = torch.sigmoid(gn_w(conv_w(x.mean(dim=2))))
        return y_h, y_w

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        y_h, y_w = self.gates(x)
        return x * y_h.unsqueeze(3) * y_w.unsqueeze(2)
