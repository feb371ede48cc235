"""Dual-attention block of DAUNet (Bouget et al., "Meningioma segmentation in T1-weighted MRI
leveraging global context and attention mechanisms", Frontiers in Radiology 2021, arXiv 2101.07715,
Sec. 2.2), the DANet position + channel attention pair (Fu et al., CVPR 2019) on 3-D volumes.

With ``u = ReLU(BN(Conv3(x)))`` reducing ``C -> C' = C / reduction`` in each branch and
``N = D*H*W`` positions::

    PAM(u) = alpha * softmax_j(<q_i, k_j>) v_j + u         q, k, v: 1x1x1 convs C' -> C' / qk_reduction, C'
    CAM(u) = beta * softmax_c'(s <u_c, u_c'>) u_c' + u     s = -1 (DANet code) or +1 (paper)
    P = ReLU(BN(Conv3(PAM(u_p)))),  Q = ReLU(BN(Conv3(CAM(u_c))))
    out = ReLU(BN(Conv1(P + Q)))                           C' -> C
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_divisible, check_float
from attnzoo.families import FeatureMapAttention
from attnzoo.kernels.dual_attention import channel_attention, position_attention
from attnzoo.registry import Card, register

__all__ = ["DualAttention3d"]


def _conv_bn_relu(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, k, padding=k // 2), nn.BatchNorm3d(c_out), nn.ReLU())


class _Position3d(nn.Module):
    def __init__(self, channels: int, qk: int, gamma_init: float) -> None:
        super().__init__()
        self.query = nn.Conv3d(channels, qk, 1)
        self.key = nn.Conv3d(channels, qk, 1)
        self.value = nn.Conv3d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.gamma * position_attention(self.query(u), self.key(u), self.value(u)) + u


class _Channel3d(nn.Module):
    def __init__(self, energy_sign: float, gamma_init: float) -> None:
        super().__init__()
        self.energy_sign = energy_sign
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.gamma * channel_attention(u, sign=self.energy_sign) + u


@register(
    Card(
        name="daunet_dual_attention",
        aliases=("dual_attention_3d", "daunet_dam"),
        family="feature_map",
        summary="3-D DANet pair: position and channel self-attention branches on reduced channels, summed.",
        paper="Meningioma segmentation in T1-weighted MRI leveraging global context and attention mechanisms",
        arxiv="2101.07715",
        year=2021,
        official_repo=None,
        parity="equations",
        time_complexity="O(N^2 C' + N C'^2 + 27 N C C'),  N = D H W, C' = C / reduction",
        memory_complexity="O(N C) with a fused SDPA kernel; O(N^2) on the math fallback and when capturing",
        layouts=("BCDHW",),
        spatial_dims=3,
        ledger=(
            "No reference code for the module is available to attnzoo; it follows the paper's description "
            "(DANet position + channel attention at each decoder skip, outputs summed) with DANet's head "
            "layout: per-branch 3x3x3 conv-BN-ReLU to C/reduction, attention, 3x3x3 conv-BN-ReLU, then a "
            "1x1x1 conv-BN-ReLU back to C.",
            "reduction=8 and qk_reduction=1 (PAM queries/keys keep the reduced width C/8, as in the common "
            "PyTorch DAUNet ports); DANet's own head uses reduction 4 and a further /8 for queries/keys - "
            "set reduction=4, qk_reduction=8 for that.",
            "CAM uses DANet's code form softmax(max(E) - E) = softmax(-E) (energy_sign=-1); the DANet "
            "paper's eq. 3 is softmax(E) (energy_sign=+1). Some ports also apply the transposed attention.",
            "Residual scales alpha/beta start at 0 as in DANet, so each branch starts as conv-BN-ReLU only.",
            "Multi-scale inputs and deep supervision of DAUNet are network-level and not part of the block.",
        ),
        tiny={"channels": 16, "gamma_init": 0.5},
        sweep={"channels": (16, 32), "reduction": (2, 8), "qk_reduction": (1, 2), "size": (1, 5)},
        bench={"channels": 64},
    )
)
class DualAttention3d(FeatureMapAttention):
    """DAUNet dual-attention block on ``x (B, C, D, H, W)`` -> ``(B, C, D, H, W)``.

    Args:
        channels: C.
        reduction: branch width ``C' = C / reduction``.
        qk_reduction: PAM query/key width ``C' / qk_reduction``.
        energy_sign: CAM softmax sign (``-1`` DANet code, ``+1`` DANet paper).
        gamma_init: initial residual scale of PAM and CAM (0 as in DANet).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 8,
        qk_reduction: int = 1,
        energy_sign: float = -1.0,
        gamma_init: float = 0.0,
    ) -> None:
        super().__init__()
        check_divisible(channels, reduction, "channels", "reduction")
        inner = channels // reduction
        check_divisible(inner, qk_reduction, "channels // reduction", "qk_reduction")
        check_float(gamma_init, "gamma_init")
        if check_float(energy_sign, "energy_sign") not in (-1.0, 1.0):
            raise ValueError(f"energy_sign must be -1 or +1, got {energy_sign!r}")
        self.channels = channels
        self.inner_channels = inner
        self.pos_in = _conv_bn_relu(channels, inner, 3)
        self.pos_attn = _Position3d(inner, inner // qk_reduction, gamma_init)
        self.pos_out = _conv_bn_relu(inner, inner, 3)
        self.ch_in = _conv_bn_relu(channels, inner, 3)
        self.ch_attn = _Channel3d(float(energy_sign), gamma_init)
        self.ch_out = _conv_bn_relu(inner, inner, 3)
        self.fuse = _conv_bn_relu(inner, channels, 1)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pos_out(self.pos_attn(self.pos_in(x)))
        c = self.ch_out(self.ch_attn(self.ch_in(x)))
        return self.fuse(p + c)
