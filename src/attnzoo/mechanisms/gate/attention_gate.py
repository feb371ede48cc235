"""Additive attention gate of Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look
for the Pancreas", MIDL 2018, arXiv 1804.03999, eq. 1-2), 2-D.

The skip features ``x: (B, C, *S)`` are gated by a coarser gating signal ``g: (B, C_g, *S_g)``::

    t = Theta * x          strided conv (kernel = stride = s, no bias): x brought to g's grid
    p = resize(Phi * g)    1x1 conv with bias, resized to t's grid (bi/trilinear)
    alpha = resize(sigmoid(psi^T relu(t + p) + b_psi))     resized back to S (bi/trilinear)
    out = W(alpha * x)     W = 1x1 conv + BatchNorm (the official output transform), or identity

``AttentionGate2d`` is registered here; the 3-D registration lives in ``attention_gate_3d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_int
from attnzoo.families import Gate
from attnzoo.registry import Card, register

__all__ = ["AdditiveAttentionGate", "AttentionGate2d"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MODE = {2: "bilinear", 3: "trilinear"}


def attention_gate_ledger(dims: int) -> tuple[str, ...]:
    """Ledger lines shared by the 2-D and 3-D cards."""
    return (
        f"Matches the official _GridAttentionBlockND(dimension={dims}, mode='concatenation') of "
        "ozan-oktay/Attention-Gated-Networks (theta strided conv without bias, phi/psi 1x1 with bias, "
        "resizing with align_corners=False, output transform W = 1x1 conv + BatchNorm); no parity "
        "fixture exists, so it is verified against these equations only.",
        "The paper's eq. 1-2 stop at x * alpha; the official code adds the W transform. attnzoo keeps it "
        "by default (output_transform=True); output_transform=False gives the paper's bare gate.",
        "The official modes 'concatenation_debug' (softplus) and 'concatenation_residual' (spatial "
        "softmax) are not provided.",
        "Default init is PyTorch's; the official code re-initialises with Kaiming normal.",
        "The official forward returns (W_y, alpha); forward here returns W_y (family contract) and "
        "gate_coefficients(x, g) returns alpha.",
        "x must be at least sub_sample_factor along every axis (the strided theta conv); attnzoo "
        "raises a ValueError naming x.",
    )


class AdditiveAttentionGate(Gate):
    """Shared implementation of the 2-D and 3-D additive attention gates (not registered itself).

    Args:
        channels: C of the skip features ``x``.
        gate_channels: C_g of the gating signal ``g``.
        inter_channels: width of theta/phi (default ``max(1, C // 2)`` as officially).
        sub_sample_factor: theta's kernel and stride, an int or one int per axis.
        output_transform: apply the official ``W`` (1x1 conv + BatchNorm) to the gated features.
    """

    dims: int = 2

    def __init__(
        self,
        channels: int,
        gate_channels: int,
        *,
        inter_channels: int | None = None,
        sub_sample_factor: int | tuple[int, ...] = 2,
        output_transform: bool = True,
    ) -> None:
        super().__init__()
        check_int(channels, "channels")
        check_int(gate_channels, "gate_channels")
        check_bool(output_transform, "output_transform")
        inter = (
            max(1, channels // 2) if inter_channels is None else check_int(inter_channels, "inter_channels")
        )
        if isinstance(sub_sample_factor, (tuple, list)):
            if len(sub_sample_factor) != self.dims:
                raise ValueError(
                    f"sub_sample_factor must be an int or {self.dims} ints, got {tuple(sub_sample_factor)}"
                )
            factor = tuple(check_int(f, "sub_sample_factor") for f in sub_sample_factor)
        else:
            factor = (check_int(sub_sample_factor, "sub_sample_factor"),) * self.dims
        conv = _CONV[self.dims]
        self.channels = channels
        self.gate_channels = gate_channels
        self.inter_channels = inter
        self.sub_sample_factor = factor
        self.theta = conv(channels, inter, factor, stride=factor, bias=False)
        self.phi = conv(gate_channels, inter, 1)
        self.psi = conv(inter, 1, 1)
        self.W: nn.Module = (
            nn.Sequential(conv(channels, channels, 1), _BN[self.dims](channels))
            if output_transform
            else nn.Identity()
        )

    def gate_coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``alpha (B, 1, *S)`` in (0, 1), at the resolution of ``x``."""
        if any(s < f for s, f in zip(x.shape[2:], self.sub_sample_factor, strict=True)):
            raise ValueError(
                f"x spatial size {tuple(x.shape[2:])} is smaller than "
                f"sub_sample_factor {self.sub_sample_factor}"
            )
        mode = _MODE[self.dims]
        theta_x = self.theta(x)
        phi_g = F.interpolate(self.phi(g), size=theta_x.shape[2:], mode=mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta_x + phi_g)))
        return F.interpolate(alpha, size=x.shape[2:], mode=mode, align_corners=False)

    def compute(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.W(self.gate_coefficients(x, g) * x)


@register(
    Card(
        name="attention_gate",
        aliases=("attention_gate_2d", "ag", "agunet_gate", "additive_attention_gate"),
        family="gate",
        summary="Additive (Bahdanau-style) spatial gate on skip features from a coarser gating signal, 2-D.",
        paper="Attention U-Net: Learning Where to Look for the Pancreas",
        arxiv="1804.03999",
        year=2018,
        official_repo="ozan-oktay/Attention-Gated-Networks",
        parity="equations",
        time_complexity="O(N C C_int / s^2 + N_g C_g C_int + N C^2),  N = H W",
        memory_complexity="O(N C)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=attention_gate_ledger(2),
        tiny={"channels": 8, "gate_channels": 16},
        sweep={
            "channels": (4, 8),
            "gate_channels": (4, 16),
            "output_transform": (True, False),
            "size": (2, 9),
        },
        bench={"channels": 64, "gate_channels": 128},
    )
)
class AttentionGate2d(AdditiveAttentionGate):
    """Attention gate on ``x (B, C, H, W)`` with ``g (B, C_g, H_g, W_g)`` -> ``(B, C, H, W)``."""

    dims = 2
