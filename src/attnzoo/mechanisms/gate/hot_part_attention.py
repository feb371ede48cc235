"""Part attention of HOT (Chen et al., "Detecting Human-Object Contact in Images", CVPR 2023,
Sec. 4, the part-attention branch of the contact decoder).

A body-part segmentation head on the guidance features ``g`` gives part logits
``P = W_p ReLU(BN(Conv3x3(g)))`` ``(B, K, H, W)``; their softmax over the ``K`` parts at each pixel
are ``K`` spatial attention maps. Every part re-weights the features ``x`` with its map and has
its own 3x3 conv-BN-ReLU branch; the branches are concatenated and fused by a 1x1 conv:

    A = softmax_K(P),   F_k = ReLU(BN_k(Conv3x3_k(x * A_k))),   y = W_f [F_1, ..., F_K] + b_f.

The ``K`` branches run as one grouped convolution.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.capture import capturing, record
from attnzoo.checks import check_int
from attnzoo.families import Gate
from attnzoo.registry import Card, register

__all__ = ["HOTPartAttention", "HOTPartOutput"]


class HOTPartOutput(NamedTuple):
    """Everything the HOT part branch computes.

    Attributes:
        out: ``(B, out_channels, H, W)`` fused output (the contact logits in HOT).
        part_logits: ``(B, K, H_g, W_g)`` pre-softmax part logits.
        part_features: ``(B, K, C_p)`` spatial sums of each part branch ``F_k`` (HOT's contrastive
            features).
    """

    out: torch.Tensor
    part_logits: torch.Tensor
    part_features: torch.Tensor


@register(
    Card(
        name="hot_part_attention",
        aliases=("hot_part_attn", "part_attention_hot"),
        family="gate",
        summary="Per-pixel softmax over body-part logits re-weights features for K part branches.",
        paper="Detecting Human-Object Contact in Images",
        arxiv="2303.03373",
        year=2023,
        official_repo="yixchen/HOT",
        official_commit="b44efe82972ad9df6b219c2911c22c5fc5a55e16",
        parity="official",
        parity_fixtures=("hot_part_attention",),
        time_complexity="O(9 H W (C_g^2 + K C C_p) + H W K (C_g + C_p out))",
        memory_complexity="O(H W K (C + C_p))",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "Official PartSegm(nChannels, num_class) returns (contact logits, part logits, x_feat); "
            "attnzoo's forward returns the fused output only; part logits and the contrastive x_feat "
            "come from parts(x, g) (the official adapter returns all three).",
            "out_channels defaults to C so the module honours the gate contract; HOT fuses to num_class "
            "contact logits (the adapter sets out_channels = num_class), and part_channels defaults to "
            "C // 8 as officially.",
            "The official code needs x and x_part at the same size; attnzoo accepts a coarser g and "
            "bilinearly upsamples the part logits (align_corners=False) before the softmax.",
            "The K per-part conv3x3 branches run as one grouped convolution (the converter concatenates "
            "their weights and BN statistics).",
            "use_conv's conv1x1 is unused by the official forward and is dropped by the converter, as are "
            "SynchronizedBatchNorm's _tmp_running_* / _running_iter buffers.",
        ),
        tiny={"channels": 16, "num_parts": 3, "gate_channels": 8},
        sweep={"num_parts": (1, 3), "size": (2, 8)},
        bench={"channels": 512, "num_parts": 18},
    )
)
class HOTPartAttention(Gate):
    """HOT part attention on ``x (B, C, H, W)`` guided by ``g (B, C_g, H_g, W_g)``.

    Returns ``(B, out_channels, H, W)`` (``out_channels = C`` by default).

    Args:
        channels: C of ``x``.
        num_parts: K body parts (attention maps and branches).
        gate_channels: C_g of ``g`` (default C).
        part_channels: width C_p of each part branch (default ``C // 8``).
        out_channels: channels of the fused output (default C; HOT uses K contact classes).
    """

    def __init__(
        self,
        channels: int,
        num_parts: int,
        gate_channels: int | None = None,
        *,
        part_channels: int | None = None,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels")
        self.num_parts = check_int(num_parts, "num_parts")
        self.gate_channels = check_int(channels if gate_channels is None else gate_channels, "gate_channels")
        if part_channels is None and channels < 8:
            raise ValueError(f"channels must be >= 8 for the default part_channels = C // 8, got {channels}")
        cp = channels // 8 if part_channels is None else part_channels
        self.part_channels = check_int(cp, "part_channels")
        self.out_channels = check_int(channels if out_channels is None else out_channels, "out_channels")
        cg, k, cp = self.gate_channels, self.num_parts, self.part_channels
        self.part_conv = nn.Conv2d(cg, cg, 3, padding=1, bias=False)
        self.part_bn = nn.BatchNorm2d(cg)
        self.part_head = nn.Conv2d(cg, k, 1)
        self.branch_conv = nn.Conv2d(k * channels, k * cp, 3, padding=1, groups=k, bias=False)
        self.branch_bn = nn.BatchNorm2d(k * cp)
        self.fuse = nn.Conv2d(k * cp, self.out_channels, 1)

    def part_logits(self, g: torch.Tensor) -> torch.Tensor:
        """Pre-softmax body-part logits ``(B, K, H_g, W_g)``."""
        return self.part_head(torch.relu(self.part_bn(self.part_conv(g))))

    def parts(self, x: torch.Tensor, g: torch.Tensor) -> HOTPartOutput:
        """Fused output, part logits and per-part pooled features (call through ``forward`` to validate)."""
        logits = self.part_logits(g)
        size = x.shape[-2:]
        full = (
            logits
            if logits.shape[-2:] == size
            else F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        )
        attn = full.softmax(dim=1)
        if capturing():
            record(attn.flatten(2).transpose(1, 2).unsqueeze(1), kind="part")
        b, c, h, w = x.shape
        weighted = (x.unsqueeze(1) * attn.unsqueeze(2)).reshape(b, self.num_parts * c, h, w)
        feats = torch.relu(self.branch_bn(self.branch_conv(weighted)))
        pooled = feats.sum(dim=(2, 3)).reshape(b, self.num_parts, self.part_channels)
        return HOTPartOutput(self.fuse(feats), logits, pooled)

    def compute(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.parts(x, g).out
