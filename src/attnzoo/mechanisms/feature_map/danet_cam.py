"""Channel attention module (CAM) of dual-attention networks, as used by Multi-scale self-guided
attention (Sinha & Dolz, "Multi-scale self-guided attention for medical image segmentation", IEEE
JBHI 2020, arXiv 1906.02849, eq. 3-4; the module is DANet's, Fu et al., CVPR 2019, eq. 3-4).

With ``X = x.view(B, C, H*W)`` and no projections::

    E = X X^T                              (B, C, C)
    A = softmax_j(max_j(E) - E) = softmax_j(-E)     (the official code; the paper writes softmax(E))
    out = gamma * (A X) + x                gamma a learned scalar, 0 at initialisation
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_float, check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.kernels.dual_attention import channel_attention
from attnzoo.registry import Card, register

__all__ = ["ChannelSelfAttention"]


@register(
    Card(
        name="danet_cam",
        aliases=("cam", "channel_attention_module", "msga_cam"),
        family="feature_map",
        summary="Residual softmax attention among channels (C x C affinity of the flattened map).",
        paper="Multi-scale self-guided attention for medical image segmentation",
        arxiv="1906.02849",
        year=2020,
        official_repo="sinAshish/Multi-Scale-Attention",
        official_commit="96d76f2794ee1b16e847f38a16d397d137c774f6",
        parity="official",
        parity_fixtures=("msga_cam",),
        time_complexity="O(C^2 N),  N = H W",
        memory_complexity="O(C N) with SDPA (O(C^2) when capturing weights)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "The module is DANet's CAM (Fu et al., arXiv 1809.02983) copied into the MSGA repo (authors' "
            "issue #13); parity is against sinAshish/Multi-Scale-Attention CAM_Module.",
            "The official code applies softmax(max(E) - E) = softmax(-E): the most ANTI-correlated channels "
            "get the most weight, while both papers write softmax(E). attnzoo follows the code "
            "(energy_sign=-1, default); energy_sign=+1 gives the papers' form.",
            "Computed by the shared SDPA kernel with channels as tokens (q = k = v = X, "
            "scale = energy_sign), so the max-subtraction is the kernel's own stabilisation.",
            "The official constructor's in_dim is stored and unused; attnzoo checks it against the input.",
            "gamma starts at 0 as officially (identity at init); gamma_init= changes it.",
        ),
        tiny={"channels": 8, "gamma_init": 0.5},
        sweep={"channels": (4, 8), "size": (1, 8)},
        bench={"channels": 64},
    )
)
class ChannelSelfAttention(FeatureMapAttention):
    """CAM on ``x (B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        channels: C (only checked; the module has no projections).
        energy_sign: ``-1`` for the official ``softmax(max(E) - E)``, ``+1`` for the papers' ``softmax(E)``.
        gamma_init: initial value of the residual scale ``gamma`` (0 = identity, as officially).
    """

    def __init__(self, channels: int, *, energy_sign: float = -1.0, gamma_init: float = 0.0) -> None:
        super().__init__()
        check_int(channels, "channels")
        check_float(gamma_init, "gamma_init")
        if check_float(energy_sign, "energy_sign") not in (-1.0, 1.0):
            raise ValueError(f"energy_sign must be -1 or +1, got {energy_sign!r}")
        self.channels = channels
        self.energy_sign = float(energy_sign)
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init)))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * channel_attention(x, sign=self.energy_sign) + x
