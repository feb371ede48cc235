"""Multi-scale adversarial attention gate (Valvano, Leo & Tsaftaris, "Learning to Segment from
Scribbles using Multi-scale Adversarial Attention Gates", IEEE TMI 2021, arXiv 2007.01152, Sec. III-B).

At a decoder level with features ``x: (B, C, H, W)`` the gate predicts a K-class segmentation and
keeps the foreground::

    s = softmax_k(W * x + b)        (B, K, H, W), a 1x1 convolution; channel 0 is background
    a = sum_{k >= 1} s_k            (B, 1, H, W), i.e. 1 - s_0 (summed, as officially, for precision)
    out = x * a

During training the multi-scale ``s`` of every level are shown to an adversarial discriminator
(not part of the gate), which is what makes the gates "adversarial".
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_int, check_tensor
from attnzoo.families import FeatureMapAttention
from attnzoo.registry import Card, register

__all__ = ["AdversarialAttentionGate"]


@register(
    Card(
        name="adversarial_attention_gate",
        aliases=("maag", "multiscale_adversarial_attention_gate", "scribble_attention_gate"),
        family="feature_map",
        summary="Self-gate by the foreground probability of a 1x1-conv segmentation head (shown to a GAN).",
        paper="Learning to Segment from Scribbles using Multi-scale Adversarial Attention Gates",
        arxiv="2007.01152",
        year=2021,
        official_repo="gvalvano/multiscale-adversarial-attention-gates",
        parity="equations",
        time_complexity="O(N C K),  N = H W",
        memory_complexity="O(N (C + K))",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "The official code is TensorFlow 1 (no fixtures); attnzoo follows the paper's equations in "
            "NCHW. Parameters are conv.weight (K, C, 1, 1) and conv.bias (K); a TF kernel (1, 1, C, K) "
            "converts by permute(3, 2, 0, 1).",
            "In the official decoder brick the segmentation is predicted from the penultimate conv "
            "(conv2_act) and gates the last one (conv3_act); gate_and_segmentation(x, source=...) "
            "reproduces that, forward(x) gates x by its own prediction as in the paper's figure.",
            "The adversarial discriminator and the scribble losses are training-level and not part of "
            "the gate; gate_and_segmentation returns s for them (the official code feeds s[:, 1:]).",
            "Default init is PyTorch's; the official code uses He-normal weights and zero bias.",
        ),
        tiny={"channels": 8, "num_classes": 4},
        sweep={"channels": (4, 8), "num_classes": (2, 4), "size": (2, 8)},
        bench={"channels": 64, "num_classes": 4},
    )
)
class AdversarialAttentionGate(FeatureMapAttention):
    """Attention gate on ``x (B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        channels: C of the features the segmentation is predicted from.
        num_classes: K segmentation classes including background (channel 0), K >= 2.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        check_int(channels, "channels")
        if check_int(num_classes, "num_classes") < 2:
            raise ValueError(
                f"num_classes must be an int >= 2 (background + foreground), got {num_classes!r}"
            )
        self.channels = channels
        self.num_classes = num_classes
        self.conv = nn.Conv2d(channels, num_classes, 1)

    def segmentation(self, source: torch.Tensor) -> torch.Tensor:
        """``s = softmax(W * source + b)``, ``(B, K, H, W)``."""
        return torch.softmax(self.conv(source), dim=1)

    def gate_and_segmentation(
        self, x: torch.Tensor, source: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x * a, s)`` with ``s`` predicted from ``source`` (default ``x``, which then needs C
        channels; ``source`` needs C channels and x's batch and size)."""
        check_tensor(x, "x", ndim=4)
        if source is None:
            source = x
        check_tensor(source, "source", ndim=4, shape=(x.shape[0], self.channels, *x.shape[2:]))
        return self._gate(x, source)

    def _gate(self, x: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.segmentation(source)
        return x * s[:, 1:].sum(dim=1, keepdim=True), s

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self._gate(x, x)[0]
