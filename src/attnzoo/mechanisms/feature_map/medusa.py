"""MEDUSA (Aboutalebi et al., "MEDUSA: Multi-scale Encoder-Decoder Self-Attention Deep Neural Network
Architecture for Medical Image Analysis", Frontiers in Medicine 2021, arXiv 2110.06063): one
high-capacity self-attention body, an encoder-decoder, whose decoder feeds attention heads at several
scales ("single body, multi-scale heads") instead of many small attention modules.

On ``x (B, C, H, W)`` with ``D`` levels of widths ``w_l`` at ``1 / 2^l`` of the input size::

    e_0 = Conv(x),  e_l = Conv(MaxPool2(e_{l-1}))                 encoder, l = 1..D-1
    d_{D-1} = e_{D-1},  d_l = Conv([Up(d_{l+1}); e_l])            decoder with skips, l = D-2..0
    A_l = sigmoid(Conv1x1(d_l))                                   attention head of level l
    out = A_0 * x        (residual=True: (1 + A_0) * x)

``Conv`` is two 3x3 conv-BN-ReLU layers, ``Up`` bilinear resampling to the skip's size. As a
feature-map attention the level-0 head gates ``x`` itself; :meth:`Medusa.attention_maps` returns the
heads of other levels, and :class:`MedusaResNet` feeds them into the four stages of a ResNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_int, check_tensor
from attnzoo.families import FeatureMapAttention
from attnzoo.registry import Card, register

__all__ = ["Medusa", "MedusaResNet", "resnet_stage_channels"]


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


@register(
    Card(
        name="medusa",
        aliases=("multi_scale_encoder_decoder_self_attention",),
        family="feature_map",
        summary="One encoder-decoder attention body over the feature map; sigmoid heads on its decoder "
        "scales gate the input (and, through MedusaResNet, every ResNet stage).",
        paper="MEDUSA: Multi-scale Encoder-Decoder Self-Attention Deep Neural Network Architecture for "
        "Medical Image Analysis",
        arxiv="2110.06063",
        year=2021,
        official_repo="lindawangg/COVID-Net",
        official_commit="65999806546b55ab8adfc32b0cf8f70880c337dc",
        parity="equations",
        time_complexity="O(H W (C w_0 + w_0^2)) (each coarser level costs 1/4 of the pixels, 2x the width)",
        memory_complexity="O(H W (C + w_0))",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "The official release (COVID-Net CXR-3 in lindawangg/COVID-Net) is a TensorFlow checkpoint "
            "behind an external link with no model code; the repository shows only that the MEDUSA body "
            "reads its own 256x256 grayscale, standardised copy of the image (data.py "
            "process_image_file_medusa). Nothing below could be checked against it.",
            "Guess: the body is a U-Net-style convolutional encoder-decoder (double 3x3 conv-BN-ReLU, 2x2 "
            "max pooling, bilinear up-sampling, skip concatenation), widths doubling per level.",
            "Guess: each head is a 1x1 convolution and a sigmoid, and gates the features multiplicatively "
            "(residual=False); residual=True uses the (1 + A) * x of residual attention networks.",
            "As a feature-map attention the body reads the feature map it gates (the paper's body reads "
            "the image); MedusaResNet reproduces the paper's layout: the body reads the image and its "
            "heads at 1/4..1/32 gate the outputs of a ResNet's four stages.",
            "Heads whose map differs in size from the gated features (odd input sizes) are resampled "
            "bilinearly to them.",
        ),
        tiny={"channels": 8, "width": 4, "depth": 2},
        bench={"channels": 64, "width": 16, "depth": 3},
        sweep={"depth": (1, 2, 3), "width": (2, 4), "residual": (False, True), "size": (1, 8)},
    )
)
class Medusa(FeatureMapAttention):
    """MEDUSA on ``x (B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        channels: C.
        width: body width ``w_0`` at full resolution; level ``l`` has ``min(w_0 2^l, max_width)``.
        depth: D resolution levels of the body (1 = no down-sampling).
        head_channels: extra heads ``{level: channels}`` for :meth:`attention_maps` (level 0 always
            has a ``channels``-wide head, the one that gates ``x``).
        max_width: cap on the level widths (``None`` = no cap).
        residual: ``(1 + A) * x`` instead of ``A * x``.
    """

    def __init__(
        self,
        channels: int,
        *,
        width: int = 16,
        depth: int = 3,
        head_channels: Mapping[int, int] | None = None,
        max_width: int | None = None,
        residual: bool = False,
    ) -> None:
        super().__init__()
        check_int(channels, "channels")
        check_int(width, "width")
        check_int(depth, "depth")
        cap = None if max_width is None else check_int(max_width, "max_width")
        self.residual = check_bool(residual, "residual")
        heads = dict(head_channels or {})
        if heads.get(0, channels) != channels:
            raise ValueError(f"head_channels[0] must be channels={channels} (the head that gates x)")
        heads[0] = channels
        for level, c in heads.items():
            check_int(c, f"head_channels[{level}]")
            if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < depth:
                raise ValueError(f"head_channels keys must be levels 0..depth-1={depth - 1}, got {level!r}")
        self.channels = channels
        self.widths = [width * 2**i if cap is None else min(width * 2**i, cap) for i in range(depth)]
        w = self.widths
        self.encoder = nn.ModuleList(
            [_double_conv(channels if i == 0 else w[i - 1], w[i]) for i in range(depth)]
        )
        self.decoder = nn.ModuleList([_double_conv(w[i + 1] + w[i], w[i]) for i in range(depth - 1)])
        self.heads = nn.ModuleDict({str(lv): nn.Conv2d(w[lv], c, 1) for lv, c in sorted(heads.items())})

    def decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder features ``[d_0, ..., d_{D-1}]``, ``d_l: (B, w_l, ~H / 2^l, ~W / 2^l)``."""
        skips = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else F.max_pool2d(h, 2, ceil_mode=True))
            skips.append(h)
        out = [skips[-1]]
        for i in range(len(self.decoder) - 1, -1, -1):
            up = F.interpolate(out[0], size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            out.insert(0, self.decoder[i](torch.cat([up, skips[i]], dim=1)))
        return out

    def attention_maps(self, x: torch.Tensor, levels: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        """Head outputs ``{level: A_l (B, c_l, H_l, W_l)}`` in ``(0, 1)`` for ``levels`` (default all
        heads) of the body run on ``x (B, C, H, W)``."""
        check_tensor(x, "x", ndim=4, shape=(None, self.channels, None, None))
        wanted = sorted(int(k) for k in self.heads) if levels is None else list(levels)
        missing = [lv for lv in wanted if str(lv) not in self.heads]
        if missing:
            raise ValueError(
                f"levels {missing} have no head; heads exist at {sorted(int(k) for k in self.heads)}"
            )
        decoded = self.decode(x)
        return {lv: torch.sigmoid(self.heads[str(lv)](decoded[lv])) for lv in wanted}

    def gate(self, features: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``a * features`` (or ``(1 + a) * features``), ``a`` resampled to the size of ``features``."""
        if a.shape[-2:] != features.shape[-2:]:
            a = F.interpolate(a, size=features.shape[-2:], mode="bilinear", align_corners=False)
        return features * (1 + a) if self.residual else features * a

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x, self.attention_maps(x, levels=(0,))[0])


def resnet_stage_channels(stage: nn.Module) -> int:
    """Output channels of a ResNet stage: those of its last BatchNorm2d."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise ValueError("a ResNet stage without BatchNorm2d: cannot read its output channels")
    return norms[-1].num_features


class MedusaResNet(nn.Module):
    """A torchvision or timm ResNet whose four stages are gated by one MEDUSA body on the image.

    ``images (B, in_chans, H, W) -> logits``: the body (depth 6) reads the images; its heads at levels
    2..5 (1/4..1/32, the strides of ``layer1..layer4``) gate each stage's output, resampled to it when
    odd sizes differ::

        net = MedusaResNet(torchvision.models.resnet18(num_classes=3), width=8, max_width=128)
        logits = net(torch.randn(2, 3, 224, 224))

    Args:
        resnet: a module with ``conv1, bn1, relu (torchvision) or act1 (timm), maxpool, layer1..layer4``
            and ``avgpool`` + ``fc`` (torchvision) or ``global_pool`` + ``fc`` (timm); it is used in place.
        in_chans: image channels the body reads.
        width, max_width, residual: the body's (see :class:`Medusa`).
    """

    levels = (2, 3, 4, 5)

    def __init__(
        self,
        resnet: nn.Module,
        *,
        in_chans: int = 3,
        width: int = 8,
        max_width: int | None = 256,
        residual: bool = False,
    ) -> None:
        super().__init__()
        needed = ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4", "fc")
        absent = [a for a in needed if not hasattr(resnet, a)]
        if absent or not (hasattr(resnet, "relu") or hasattr(resnet, "act1")):
            raise TypeError(
                f"resnet must be a torchvision or timm ResNet; it lacks {absent or ['relu/act1']}"
            )
        self.resnet = resnet
        self.stages = [getattr(resnet, f"layer{i}") for i in range(1, 5)]
        heads = {lv: resnet_stage_channels(s) for lv, s in zip(self.levels, self.stages)}
        self.body = Medusa(
            in_chans, width=width, depth=6, head_channels=heads, max_width=max_width, residual=residual
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.body.attention_maps(images, levels=self.levels)
        r = self.resnet
        act = r.relu if hasattr(r, "relu") else r.act1
        x = r.maxpool(act(r.bn1(r.conv1(images))))
        for level, stage in zip(self.levels, self.stages):
            x = self.body.gate(stage(x), maps[level])
        pooled = r.avgpool(x).flatten(1) if hasattr(r, "avgpool") else r.global_pool(x)
        return r.fc(pooled)
