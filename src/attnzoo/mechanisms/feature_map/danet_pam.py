"""Position attention module (PAM) of dual-attention networks, as used by Multi-scale self-guided
attention (Sinha & Dolz, "Multi-scale self-guided attention for medical image segmentation", IEEE
JBHI 2020, arXiv 1906.02849, eq. 1-2; the module is DANet's, Fu et al., CVPR 2019, eq. 1-2).

With ``N = H*W`` positions flattened row-major, ``Q = W_q x``, ``K = W_k x`` (1x1 convolutions
``C -> C // 8``) and ``V = W_v x`` (``C -> C``)::

    A = softmax_j(Q^T K)            (B, N, N), no 1/sqrt(d) scaling
    out = gamma * (V A^T) + x       gamma a learned scalar, 0 at initialisation
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_float, check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.kernels.dual_attention import position_attention
from attnzoo.registry import Card, register

__all__ = ["PositionAttention"]


@register(
    Card(
        name="danet_pam",
        aliases=("pam", "position_attention_module", "msga_pam"),
        family="feature_map",
        summary="Residual softmax self-attention over all H*W positions with C/8-wide queries and keys.",
        paper="Multi-scale self-guided attention for medical image segmentation",
        arxiv="1906.02849",
        year=2020,
        official_repo="sinAshish/Multi-Scale-Attention",
        official_commit="96d76f2794ee1b16e847f38a16d397d137c774f6",
        parity="official",
        parity_fixtures=("msga_pam",),
        time_complexity="O(N^2 (C/8 + C) + N C^2),  N = H W",
        memory_complexity="O(N C) with a fused SDPA kernel; O(N^2) on the math fallback (CPU, d_qk != d_v) "
        "and when capturing weights",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "The module is DANet's PAM (Fu et al., arXiv 1809.02983) copied into the MSGA repo (authors' "
            "issue #13); parity is against sinAshish/Multi-Scale-Attention PAM_Module.",
            "Same math as the official code (energy = Q^T K unscaled, softmax over keys, gamma * out + x); "
            "attnzoo runs it through the shared SDPA kernel instead of materialising the N x N matrix, "
            "except under attnzoo.capture.",
            "Query/key width is C // reduction (floor, reduction=8 as officially); attnzoo raises for "
            "C < reduction where the official module builds 0-channel convolutions.",
            "gamma starts at 0 as officially (the block is the identity at init); gamma_init= changes it.",
            "Parameter names match the official state_dict (query_conv, key_conv, value_conv, gamma).",
        ),
        tiny={"channels": 16, "gamma_init": 0.5},
        sweep={"channels": (8, 16), "reduction": (2, 8), "size": (1, 8)},
        bench={"channels": 64},
        conformance={
            "zero_grad_ok": {
                conv: "with gamma_init=0 (the official default, the bench configuration) the attention "
                "branch is scaled by gamma = 0, so its convolutions get no gradient until gamma moves"
                for conv in ("query_conv", "key_conv", "value_conv")
            }
        },
    )
)
class PositionAttention(FeatureMapAttention):
    """PAM on ``x (B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        channels: C.
        reduction: query/key width is ``C // reduction``.
        gamma_init: initial value of the residual scale ``gamma`` (0 = identity, as officially).
    """

    def __init__(self, channels: int, *, reduction: int = 8, gamma_init: float = 0.0) -> None:
        super().__init__()
        check_int(reduction, "reduction")
        if check_int(channels, "channels") < reduction:
            raise ValueError(
                f"channels must be an int >= reduction={reduction} (query/key width C // reduction "
                f"must be positive), got {channels!r}"
            )
        check_float(gamma_init, "gamma_init")
        check_float(gamma_init, "gamma_init")
        self.channels = channels
        self.reduction = reduction
        qk = channels // reduction
        self.query_conv = nn.Conv2d(channels, qk, 1)
        self.key_conv = nn.Conv2d(channels, qk, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init)))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        out = position_attention(self.query_conv(x), self.key_conv(x), self.value_conv(x))
        return self.gamma * out + x
