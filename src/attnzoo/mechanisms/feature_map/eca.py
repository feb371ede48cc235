"""Efficient Channel Attention (Wang et al., "ECA-Net", CVPR 2020, eq. 12 and 14).

``w = sigmoid(C1D_k(GAP(x)))`` and ``out = x * w``: a 1-D convolution of kernel size ``k`` across
the channel axis of the pooled descriptor (zero padding, no bias). The paper chooses
``k = psi(C) = | log2(C) / gamma + b / gamma |_odd`` (eq. 14, gamma=2, b=1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnzoo.checks import check_float, check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.registry import Card, register

__all__ = ["EfficientChannelAttention", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """The paper's adaptive kernel size ``|log2(C)/gamma + b/gamma|_odd`` (eq. 14).

    ``|t|_odd`` is the nearest odd number to ``t``; as in the authors' follow-up code and timm,
    ``t`` is truncated to an int and bumped to the next odd number when even.
    """
    if channels <= 0:
        raise ValueError(f"channels must be positive, got {channels}")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@register(
    Card(
        name="eca",
        aliases=("eca_net",),
        family="feature_map",
        summary="Channel attention by a k-wide 1-D convolution across pooled channels.",
        paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
        arxiv="1910.03151",
        year=2020,
        official_repo="BangguWu/ECANet",
        official_commit="b332f6b3e6e2afe8a3287dc8ee8440a0fbec74c4",
        parity="official",
        parity_fixtures=("eca",),
        time_complexity="O(C H W + C k)",
        memory_complexity="O(C H W)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "k_size='adaptive' applies the paper's eq. 14; the official eca_layer never implements "
            "it (it takes k_size literally and ignores `channel`).",
            "The released ECA-ResNet-50 uses k=[3, 5, 5, 7] on 256/512/1024/2048 channels while "
            "eq. 14 gives [5, 5, 5, 7]: load checkpoints with the k stored in conv.weight.",
            "Only odd k: the official code fails on even k (output length C-1); attnzoo raises.",
        ),
        tiny={"channels": 8, "k_size": 3},
        sweep={"channels": (4, 8, 16), "k_size": (1, 3, 5, "adaptive"), "size": (1, 8)},
        bench={"channels": 64, "k_size": "adaptive"},
    )
)
class EfficientChannelAttention(FeatureMapAttention):
    """ECA on ``x (B, C, H, W)``.

    Args:
        channels: C.
        k_size: odd kernel size, or ``"adaptive"`` for the paper's rule from ``channels``.
        gamma, b: parameters of the adaptive rule.
    """

    def __init__(self, channels: int, k_size: int | str = 3, *, gamma: float = 2.0, b: float = 1.0) -> None:
        super().__init__()
        check_int(channels, "channels")
        check_float(gamma, "gamma", positive=True)
        check_float(b, "b")
        if isinstance(k_size, str):
            if k_size != "adaptive":
                raise ValueError(f"k_size must be a positive odd int or 'adaptive', got {k_size!r}")
            k_size = eca_kernel_size(channels, gamma, b)
        if check_int(k_size, "k_size") % 2 == 0:
            raise ValueError(f"k_size must be a positive odd int or 'adaptive', got {k_size!r}")
        self.channels = channels
        self.k_size = k_size
        self.conv = nn.Conv1d(1, 1, k_size, padding=(k_size - 1) // 2, bias=False)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3)).unsqueeze(1)
        w = torch.sigmoid(self.conv(y)).squeeze(1)
        return x * w[:, :, None, None]
