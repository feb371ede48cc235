"""PAT_sf: partial convolution with partial self-attention (Zhang et al., "Partial Convolution
Meets Visual Attention", arXiv 2503.03148, PATNet's PAT_sf mixer).

The channels are split ``x = [x1 (C/n), x2 (C - C/n)]``; ``x1`` goes through a 3x3 convolution and
``x2`` (layer-normalised over channels, as tokens ``t_i`` of the H x W grid) through multi-head
self-attention with an iRPE relative-position bias on the keys (Wu et al., "Rethinking and Improving
Relative Position Encoding for Vision Transformer", ICCV 2021, bias mode, Euclidean method):

    o = W_o softmax(Q K^T / sqrt(d) + B_h) V,   B_h[i, j] = b_h[ g(round(||p_i - p_j||_2)) ]

with ``g`` the piecewise index of iRPE eq. 18 (``g(d) = round(d)`` for ``d <= alpha``, else
``min(round(alpha + ln(d / alpha) / ln(gamma / alpha) (beta - alpha)), beta)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnzoo.checks import check_divisible, check_float, check_rate
from attnzoo.families import FeatureMapAttention
from attnzoo.kernels import attention, merge_heads, split_heads
from attnzoo.mechanisms.feature_map.pat_ch import _check_n_div
from attnzoo.registry import Card, register

__all__ = ["PartialSelfAttention", "irpe_euclidean_buckets"]


def irpe_euclidean_buckets(
    height: int, width: int, *, ratio: float = 20.0, device: torch.device | None = None
) -> torch.Tensor:
    """iRPE bucket of every token pair of an ``height x width`` grid, ``(HW, HW)`` long in ``[beta, 2 beta]``.

    ``alpha, beta, gamma = ratio, 2 ratio, 8 ratio``; the distance and the piecewise index are
    computed in float32 (the iRPE reference does so and rounds half to even).
    """
    alpha, beta, gamma = 1.0 * ratio, 2.0 * ratio, 8.0 * ratio
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    r, c = (t.reshape(-1) for t in torch.meshgrid(rows, cols, indexing="ij"))  # ONNX: no repeat_interleave
    sq = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    dis = sq.to(torch.float32).sqrt().round()
    far = alpha + torch.log(dis.clamp(min=alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    idx = torch.where(dis <= alpha, dis, far.round().clamp(max=beta))
    return idx.to(torch.long) + int(beta)


@register(
    Card(
        name="pat_sf",
        aliases=("partial_self_attention", "pat_self"),
        family="feature_map",
        summary="Partial 3x3 conv on C/n channels, MHSA with iRPE key bias on the rest.",
        paper="Partial Convolution Meets Visual Attention",
        arxiv="2503.03148",
        year=2025,
        official_repo="haiduo/PartialNet",
        official_commit="679cfc0d6f54872686db308de0c4068ee7caf084",
        parity="official",
        parity_fixtures=("pat_partial_attention",),
        time_complexity="O((HW)^2 C + HW C^2)",
        memory_complexity="O(h (HW)^2) for the position bias, O(C H W) otherwise",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "No PATNet repository exists; parity is against Partial_conv3(use_attn=True, "
            "channel_type='self') of haiduo/PartialNet (RPEAttention + iRPE), which implements PAT_sf.",
            "The official head count is 4 (patnet_t0=True, all released configs) or 6; attnzoo takes "
            "num_heads (default 4), which must divide the attended channels.",
            "iRPE keeps all 2*beta+1 = 81 buckets of the official lookup table although Euclidean "
            "distances only reach buckets beta..2*beta (the lower half is never used, kept so "
            "checkpoints load unchanged).",
            "Attention and projection dropout default to 0 (official 0.1, applied in training only).",
            "The softmax runs through attnzoo.kernels.attention with the iRPE term as additive bias "
            "(officially added to the materialised logits).",
            "The block's residual and MLP (PartialNet MLPBlock) are not part of this mechanism.",
        ),
        tiny={"channels": 10, "n_div": 5, "num_heads": 2},
        sweep={"num_heads": (1, 2), "size": (2, 8)},
        bench={"channels": 64, "n_div": 4, "num_heads": 4},
    )
)
class PartialSelfAttention(FeatureMapAttention):
    """PAT_sf on ``x (B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: C.
        n_div: the first ``C // n_div`` channels are convolved, the rest attended.
        num_heads: heads of the self-attention; must divide ``C - C // n_div``.
        rpe_ratio: iRPE ratio (``alpha, beta, gamma = r, 2r, 8r``).
        attn_drop, proj_drop: dropout on the attention and after the projection (training only).
        eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        channels: int,
        n_div: int = 4,
        num_heads: int = 4,
        *,
        rpe_ratio: float = 20.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        _check_n_div(channels, n_div)
        self.channels = channels
        self.conv_channels = channels // n_div
        self.attn_channels = channels - self.conv_channels
        check_divisible(self.attn_channels, num_heads, "channels - channels // n_div", "num_heads")
        check_float(rpe_ratio, "rpe_ratio", minimum=1.0)
        check_float(eps, "eps", positive=True)
        check_rate(attn_drop, "attn_drop")
        check_rate(proj_drop, "proj_drop")
        self.num_heads = num_heads
        self.rpe_ratio = float(rpe_ratio)
        self.attn_drop = attn_drop
        self.eps = eps
        c1, c2 = self.conv_channels, self.attn_channels
        self.partial_conv = nn.Conv2d(c1, c1, 3, padding=1, bias=False)
        self.norm = nn.LayerNorm(c2, eps=eps)
        self.qkv = nn.Linear(c2, 3 * c2, bias=False)
        self.proj = nn.Linear(c2, c2)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rpe_table = nn.Parameter(torch.zeros(num_heads, 2 * int(2.0 * self.rpe_ratio) + 1))

    def position_bias(self, height: int, width: int) -> torch.Tensor:
        """iRPE key bias ``(h, HW, HW)`` for an ``height x width`` grid."""
        buckets = irpe_euclidean_buckets(height, width, ratio=self.rpe_ratio, device=self.rpe_table.device)
        return self.rpe_table[:, buckets]

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x1, x2 = x.split([self.conv_channels, self.attn_channels], dim=1)
        t = self.norm(x2.flatten(2).transpose(1, 2))
        q, k, v = split_heads(self.qkv(t), 3 * self.num_heads).chunk(3, dim=1)
        drop = self.attn_drop if self.training else 0.0
        o = attention(q, k, v, bias=self.position_bias(h, w)[None].to(x.dtype), dropout_p=drop)
        o = self.proj_drop(self.proj(merge_heads(o)))
        o = o.transpose(1, 2).reshape(b, self.attn_channels, h, w)
        return torch.cat([self.partial_conv(x1), o], dim=1)
