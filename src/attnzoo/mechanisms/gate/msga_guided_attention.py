"""Guided self-attention block of Multi-scale self-guided attention (Sinha & Dolz, "Multi-scale
self-guided attention for medical image segmentation", IEEE JBHI 2020, arXiv 1906.02849, Sec. III-B,
eq. 5-9).

For a scale's features ``x = F_s`` and the multi-scale guide ``g = F_MS`` (both ``(B, C, H, W)``)
each of the two stacked steps ``t = 1, 2`` computes, on ``z_t = [x ; G_t]`` (channel concat)::

    P_t = ConvBNPReLU(PAM(ConvBNPReLU(z_t)))        position attention branch
    C_t = ConvBNPReLU(CAM(ConvBNPReLU(z_t)))        channel attention branch
    (e_t, r_t) = EncDec_t(z_t)                      semantic encoder-decoder (code e_t, reconstruction r_t)
    A_t = W_1x1((P_t + C_t) * Conv3x3(r_t))

with ``G_1 = g`` and ``G_2 = A_1 * g``; the block returns ``A_2``. The guided losses are
``||e_1 - e_2||^2`` and ``||z_t - r_t||^2`` (:meth:`MultiScaleGuidedAttention.guided_losses`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.capture import module_scope
from attnzoo.checks import check_float, check_int, check_tensor
from attnzoo.families import Gate
from attnzoo.mechanisms.feature_map.danet_cam import ChannelSelfAttention
from attnzoo.mechanisms.feature_map.danet_pam import PositionAttention
from attnzoo.registry import Card, register

__all__ = ["GuidedAttentionOutput", "MultiScaleGuidedAttention"]


class GuidedAttentionOutput(NamedTuple):
    """Everything one block computes; ``out`` is what ``forward`` returns.

    Attributes:
        out: ``A_2 (B, C, H, W)``.
        attention: ``A_1 (B, C, H, W)``, the first step's map.
        inputs: ``(z_1, z_2)``, each ``(B, 2C, H, W)``.
        reconstructions: ``(r_1, r_2)``, the encoder-decoders' outputs, shaped like ``inputs``.
        encodings: ``(e_1, e_2)``, the encoders' codes, each ``(B, 8C, ceil(H/4), ceil(W/4))``.
    """

    out: torch.Tensor
    attention: torch.Tensor
    inputs: tuple[torch.Tensor, torch.Tensor]
    reconstructions: tuple[torch.Tensor, torch.Tensor]
    encodings: tuple[torch.Tensor, torch.Tensor]


def _conv_bn(c_in: int, c_out: int, act: nn.Module) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), act]


class _AttentionBranch(nn.Module):
    """``ConvBNPReLU(2C -> C) -> PAM or CAM -> ConvBNPReLU(C -> C)`` (official ``PAM_CAM_Layer``)."""

    def __init__(self, channels: int, attention: nn.Module) -> None:
        super().__init__()
        self.attn = nn.Sequential(
            *_conv_bn(2 * channels, channels, nn.PReLU()),
            attention,
            *_conv_bn(channels, channels, nn.PReLU()),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.attn(z)


class _SemanticEncoderDecoder(nn.Module):
    """Two conv-conv-maxpool encoder stages and two conv-conv-deconv decoder stages
    (official ``semanticModule``); pooling rounds up so that odd sizes keep every pixel."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        relu = nn.ReLU
        self.enc1 = nn.Sequential(
            *_conv_bn(in_dim, 2 * in_dim, relu()),
            *_conv_bn(2 * in_dim, 2 * in_dim, relu()),
            nn.MaxPool2d(2, 2, ceil_mode=True),
        )
        self.enc2 = nn.Sequential(
            *_conv_bn(2 * in_dim, 4 * in_dim, relu()),
            *_conv_bn(4 * in_dim, 4 * in_dim, relu()),
            nn.MaxPool2d(2, 2, ceil_mode=True),
        )
        self.dec2 = nn.Sequential(
            *_conv_bn(4 * in_dim, 2 * in_dim, relu()),
            *_conv_bn(2 * in_dim, 2 * in_dim, relu()),
            nn.ConvTranspose2d(2 * in_dim, 2 * in_dim, 2, stride=2),
        )
        self.dec1 = nn.Sequential(
            *_conv_bn(2 * in_dim, in_dim, relu()),
            *_conv_bn(in_dim, in_dim, relu()),
            nn.ConvTranspose2d(in_dim, in_dim, 2, stride=2),
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e1 = self.enc1(z)
        code = self.enc2(e1)
        d2 = F.interpolate(self.dec2(code), size=e1.shape[2:], mode="bilinear", align_corners=False)
        rec = self.dec1(d2)
        if torch.compiler.is_exporting() or rec.shape[2:] != z.shape[2:]:  # same size: identity
            rec = F.interpolate(rec, size=z.shape[2:], mode="bilinear", align_corners=False)
        return code, rec


class _GuidedStep(nn.Module):
    def __init__(self, channels: int, gamma_init: float) -> None:
        super().__init__()
        self.pam = _AttentionBranch(channels, PositionAttention(channels, gamma_init=gamma_init))
        self.cam = _AttentionBranch(channels, ChannelSelfAttention(channels, gamma_init=gamma_init))
        self.semantic = _SemanticEncoderDecoder(2 * channels)
        self.conv_sem = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.fuse = nn.Conv2d(channels, channels, 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        code, rec = self.semantic(z)
        return self.fuse((self.pam(z) + self.cam(z)) * self.conv_sem(rec)), code, rec


@register(
    Card(
        name="msga_guided_attention",
        aliases=("guided_self_attention", "msga"),
        family="gate",
        summary="Two stacked PAM+CAM steps on [features; guide], modulated by a semantic encoder-decoder.",
        paper="Multi-scale self-guided attention for medical image segmentation",
        arxiv="1906.02849",
        year=2020,
        official_repo="sinAshish/Multi-Scale-Attention",
        official_commit="96d76f2794ee1b16e847f38a16d397d137c774f6",
        parity="equations",
        time_complexity="O(N^2 C + N C^2 + N C^2 k^2),  N = H W (PAM dominates)",
        memory_complexity="O(N C) with a fused SDPA kernel (PAM falls back to O(N^2) on CPU)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "Mirrors one scale of the official DAF_stack (two stacked steps of PAM_CAM_Layer x2 + "
            "semanticModule + conv_sem + conv8); the PAM/CAM inside are the fixture-verified danet_pam / "
            "danet_cam, but the block itself has no fixture (the official notes exclude DAF_stack).",
            "The official network shares one semanticModule per step across its four scales and owns the "
            "PAM/CAM layers per scale; one attnzoo block owns all of them (share modules between blocks "
            "yourself to reproduce the official weight tying).",
            "The guide g may be coarser than x: attnzoo resizes it bilinearly (align_corners=False) as the "
            "official code does when it brings every scale to layer1's size.",
            "Odd sizes: the encoder max-pools with ceil_mode and the reconstruction is resized bilinearly to "
            "the input size; for H, W divisible by 4 this is exactly the official (floor) computation, which "
            "fails on other sizes.",
            "MultiConv's hard-coded BatchNorm2d(64) and the deep-supervision heads are outside the block.",
            "Guided losses: guided_losses() returns MSE(e_1, e_2) and MSE(z_1, r_1) + MSE(z_2, r_2) "
            "unweighted; the official training weighs them 0.25 and 0.1 (summed over scales).",
        ),
        tiny={"channels": 8, "gamma_init": 0.5},
        sweep={"channels": (8, 16), "size": (1, 8)},
        bench={"channels": 64},
    )
)
class MultiScaleGuidedAttention(Gate):
    """Guided self-attention block: ``x (B, C, H, W)`` features, ``g (B, C, H_g, W_g)`` multi-scale
    guide -> ``(B, C, H, W)`` refined attention features ``A_2``.

    Args:
        channels: C of ``x`` and ``g`` (the official network uses 64).
        gamma_init: initial residual scale of the inner PAM/CAM (0 = identity, as officially).
    """

    def __init__(self, channels: int, *, gamma_init: float = 0.0) -> None:
        super().__init__()
        if check_int(channels, "channels") < 8:
            raise ValueError(
                f"channels must be an int >= 8 (PAM uses C // 8 query channels), got {channels!r}"
            )
        check_float(gamma_init, "gamma_init")
        check_float(gamma_init, "gamma_init")
        self.channels = channels
        self.gate_channels = channels
        self.step1 = _GuidedStep(channels, gamma_init)
        self.step2 = _GuidedStep(channels, gamma_init)

    def forward_with_aux(self, x: torch.Tensor, g: torch.Tensor) -> GuidedAttentionOutput:
        """Like ``forward`` but also returns the step-1 map and the semantic tensors (for the
        guided losses)."""
        check_tensor(x, "x", ndim=4, shape=(None, self.channels, None, None))
        check_tensor(g, "g", ndim=4, shape=(x.shape[0], self.gate_channels, None, None))
        with module_scope(self):
            return self.compute_aux(x, g)

    def compute_aux(self, x: torch.Tensor, g: torch.Tensor) -> GuidedAttentionOutput:
        """The block on validated inputs, with every intermediate the losses need."""
        if torch.compiler.is_exporting() or g.shape[2:] != x.shape[2:]:  # same size: identity
            g = F.interpolate(g, size=x.shape[2:], mode="bilinear", align_corners=False)
        z1 = torch.cat([x, g], dim=1)
        a1, e1, r1 = self.step1(z1)
        z2 = torch.cat([x, a1 * g], dim=1)
        a2, e2, r2 = self.step2(z2)
        return GuidedAttentionOutput(a2, a1, (z1, z2), (r1, r2), (e1, e2))

    def compute(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.compute_aux(x, g).out

    @staticmethod
    def guided_losses(aux: GuidedAttentionOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """``(semantic, reconstruction)``: ``MSE(e_1, e_2)`` and ``MSE(z_1, r_1) + MSE(z_2, r_2)``."""
        semantic = F.mse_loss(aux.encodings[0], aux.encodings[1])
        (z1, z2), (r1, r2) = aux.inputs, aux.reconstructions
        rec = F.mse_loss(r1, z1) + F.mse_loss(r2, z2)
        return semantic, rec
