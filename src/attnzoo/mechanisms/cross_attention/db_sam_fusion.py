"""DB-SAM's fusion of its ViT and convolution branches (Qin et al., "DB-SAM: Delving into High
Quality Universal Medical Image Segmentation", MICCAI 2024, arXiv 2410.04172, Sec. 2; official code
AlfredQin/DB-SAM, ``TwoBranchImagePyramidAdapter``, ``MSDeformCrossAttnBlock`` and ``DANE``).

One interaction stage between ViT tokens ``x (B, N, C)`` on the grid ``query_size`` and ``L``
convolution-branch levels ``c_l (B, M, C)`` on the grid ``size`` (stacked along channels in
``context (B, M, L C)``), then the ViT-convolution fusion::

    c_l  = c_l + e_l                                           (learned level embeddings)
    v    = x + Conv1x1(SE(GELU(DWConv3x3(LN(x)))))             ViT-branch channel attention (CAB)
    x'   = v + MSDA(LN(v) -> LN([c_1..c_L])),  x' += FFN(LN(x'))    ViT queries read the conv levels
    c'_l = c_l + MSDA(LN(c_l) -> LN(v)),       c'_l += FFN(LN(c'_l)) conv queries read the ViT map
    u    = Conv1x1([c'_1; ..; c'_L])                           (resampled to the ViT grid if needed)
    m    = sigmoid(Linear(LN(u)) + MLP_c(mean_N(x')))          spatial (B, N, 1) + channel (B, 1, C)
    out  = m * u + (1 - m) * x',  out += MLP(LN(out))          ViT-convolution fusion block (DANE)

``MSDA`` is multi-scale deformable attention (Deformable DETR): each query predicts, per head, ``P``
sampling offsets around its reference point (its pixel centre) on every level and softmax weights
over the ``L P`` samples, read bilinearly by :func:`attnzoo.kernels.deformable.ms_deform_attn` (the
CPU path of the CUDA op the official code compiles). ``FFN`` is ``Linear -> DWConv3x3 -> GELU ->
Linear`` on the query grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_float, check_int, check_rate, check_size
from attnzoo.families import CrossAttention
from attnzoo.kernels.deformable import ms_deform_attn, reference_points
from attnzoo.registry import Card, register

__all__ = ["DBSAMFusion", "DeformableAttention"]

Shapes = list[tuple[int, int]]


def _grid(tokens: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(B, H W, C) -> (B, C, H, W)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *shape)


def _tokens(grid: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H W, C)``."""
    return grid.flatten(2).transpose(1, 2)


class DeformableAttention(nn.Module):
    """Multi-scale deformable attention (official ``MSDeformAttn``): ``query (B, N_q, C)`` with reference
    points ``(N_q, 2)`` reads ``value (B, S, C)`` made of ``len(shapes)`` levels -> ``(B, N_q, C)``."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def reset_parameters(self) -> None:
        """The official initialisation: offsets on a ring of ``P`` radii per head, uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.num_heads, dtype=torch.float64) * (2.0 * math.pi / self.num_heads)
        ring = torch.stack([theta.cos(), theta.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        radii = torch.arange(1, self.num_points + 1, dtype=torch.float64)
        bias = ring[:, None, None, :] * radii[None, None, :, None]
        bias = bias.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        ref: torch.Tensor,
        value: torch.Tensor,
        shapes: Shapes,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n_q, _ = query.shape
        h, lv, p = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value)
        if padding is not None:
            v = v.masked_fill(~padding[..., None], 0.0)
        v = v.view(b, v.shape[1], h, -1)
        offsets = self.sampling_offsets(query).view(b, n_q, h, lv, p, 2)
        weights = self.attention_weights(query).view(b, n_q, h, lv * p).softmax(-1).view(b, n_q, h, lv, p)
        normaliser = torch.tensor([[w, hh] for hh, w in shapes], dtype=query.dtype, device=query.device)
        locations = ref[None, :, None, None, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(v, shapes, locations, weights))


class _ConvFFN(nn.Module):
    """``Linear -> DWConv3x3 (per query level, on its grid) -> GELU -> Linear`` on ``(B, N, C)``."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        h = self.fc1(x)
        parts = torch.split(h, [a * b for a, b in shapes], dim=1)
        h = torch.cat([_tokens(self.dwconv(_grid(t, s))) for t, s in zip(parts, shapes)], dim=1)
        return self.drop(self.fc2(self.drop(F.gelu(h))))


class _CrossBlock(nn.Module):
    """Official ``MSDeformCrossAttnBlock`` (query_norm and ffn_pre_norm on): pre-norm deformable
    cross-attention and FFN, each with a residual."""

    def __init__(
        self, dim: int, heads: int, levels: int, points: int, expand: float, drops: tuple[float, float]
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.value_norm = nn.LayerNorm(dim)
        self.attn = DeformableAttention(dim, heads, levels, points)
        self.attn_drop = nn.Dropout(drops[0])
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = _ConvFFN(dim, int(dim * expand), drops[1])

    def forward(
        self,
        q: torch.Tensor,
        q_shapes: Shapes,
        v: torch.Tensor,
        v_shapes: Shapes,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ref = reference_points(q_shapes, device=q.device, dtype=q.dtype)
        x = q + self.attn_drop(self.attn(self.query_norm(q), ref, self.value_norm(v), v_shapes, padding))
        return x + self.ffn(self.ffn_norm(x), q_shapes)


class _ChannelAttentionBlock(nn.Module):
    """ViT-branch CAB (official ``MbConvBlock``): ``x + Conv1x1(SE(GELU(DWConv3x3(LN(x)))))``, SE with a
    GELU, no biases and ``max(8, round8(C / 4))`` hidden channels (timm ``SEModule``, rd_ratio 0.25)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = max(8, int(dim / 4 + 4) // 8 * 8)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.se_fc1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.se_fc2 = nn.Conv2d(hidden, dim, 1, bias=False)
        self.conv_pw = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        y = F.gelu(self.conv_dw(_grid(self.norm(x), shape)))
        y = y * torch.sigmoid(self.se_fc2(F.gelu(self.se_fc1(y.mean(dim=(2, 3), keepdim=True)))))
        return x + _tokens(self.conv_pw(y))


class _Fusion(nn.Module):
    """Official ``DANE`` ViT-convolution fusion (ffn_type 'mlp')."""

    def __init__(self, dim: int, reduction: int, expand: float) -> None:
        super().__init__()
        inner = dim // reduction
        self.spatial_norm = nn.LayerNorm(dim)
        self.spatial = nn.Linear(dim, 1, bias=False)
        self.channel_fc1 = nn.Linear(dim, inner, bias=False)
        self.channel_norm = nn.LayerNorm(inner)
        self.channel_fc2 = nn.Linear(inner, dim, bias=False)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_fc1 = nn.Linear(dim, int(expand * dim))
        self.ffn_fc2 = nn.Linear(int(expand * dim), dim)

    def gate(self, vit: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        """``m (B, N, C)``: sigmoid of the spatial score of the conv tokens plus the channel score of
        the mean ViT token."""
        s = self.spatial(self.spatial_norm(conv))
        c = self.channel_fc2(self.channel_norm(F.silu(self.channel_fc1(vit.mean(dim=1, keepdim=True)))))
        return torch.sigmoid(s + c)

    def forward(self, vit: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        m = self.gate(vit, conv)
        out = conv * m + vit * (1 - m)
        return out + self.ffn_fc2(F.gelu(self.ffn_fc1(self.ffn_norm(out))))


@register(
    Card(
        name="db_sam_fusion",
        aliases=("db_sam", "db_sam_bilateral_cross_attention"),
        family="cross_attention",
        summary="ViT tokens and conv-branch levels read each other through multi-scale deformable "
        "cross-attention (after an SE channel-attention block); a sigmoid spatial+channel gate mixes them.",
        paper="DB-SAM: Delving into High Quality Universal Medical Image Segmentation",
        arxiv="2410.04172",
        year=2024,
        official_repo="AlfredQin/DB-SAM",
        official_commit="d15cd33efe502e17990a6c48e4790e65bf0a4ba5",
        parity="equations",
        time_complexity="O((N + L M) (h L P d + C^2) + N C^2)",
        memory_complexity="O((N + L M) (C + h L P))",
        layouts=("BNC",),
        spatial_dims=2,
        ledger=(
            "Reproduces the released TwoBranchImagePyramidAdapter stage with vit_conv_position='before' "
            "(two_branch_cfg.py), its MSDeformCrossAttnBlock (query_norm, ffn_pre_norm), the official "
            "MSDeformAttn initialisation and the DANE aggregation; the released configs name "
            "MultiStagesTwoBranchAdapter and FourBranchImagePyramidAdapter2, which the release lacks.",
            "MSDA runs attnzoo.kernels.deformable.ms_deform_attn (grid_sample, the math of the official "
            "ms_deform_attn_core_pytorch) instead of the compiled MultiScaleDeformableAttention CUDA op; "
            "tested against a gather reference and a scalar float64 loop.",
            "Guess: MSMixFFN (transformer/ms_deform/deformable_encoder.py) is not in the release; attnzoo "
            "uses ViT-Adapter's ConvFFN (Linear, DWConv3x3 with bias per query level, GELU, Linear).",
            "Guess: get_reference_points (vit_adapter/interaction_block.py) is not in the release; attnzoo "
            "uses ViT-Adapter's pixel centres ((j + 0.5) / W, (i + 0.5) / H), shared by every level.",
            "One interaction stage per call; the official adapter runs 4 stages between frozen SAM ViT "
            "blocks and aggregates once after the last; interact() runs further stages.",
            "Conv levels come stacked along channels (context (B, M, L*C)); officially they are separate "
            "maps on one grid (LFIP0: all 64x64), concatenated along tokens for MSDA and along channels "
            "for the 1x1 merge: the same data.",
            "When the conv grid differs from the ViT grid, the merged conv map is resampled bilinearly to "
            "the ViT grid before fusion (the official code runs equal grids only and fails otherwise).",
            "mask (B, M) True = real conv position: padded positions give zero values to the ViT queries "
            "(official input_padding_mask); the conv branch's own update still computes them.",
            "DropPath (0.3-0.4 in the configs) is not provided; attn_drop and proj_drop are.",
        ),
        tiny={"dim": 16, "num_heads": 2, "levels": 2, "num_points": 2, "reduction": 4},
        bench={"dim": 256, "num_heads": 8, "levels": 2, "num_points": 4, "reduction": 12, "queries": 256},
        sweep={
            "levels": (1, 2, 3),
            "num_points": (1, 2, 4),
            "channel_attention": (True, False),
            "size": (1, 6),
        },
        conformance={
            "skip": {
                "export_dynamic_size": "the query grid query_size is a Python value fixed when tracing",
                "sweep_f32_gradients": "the official initialisation puts every sampling point on a pixel "
                "centre, a kink of bilinear sampling: float32 rounding picks the other one-sided gradient "
                "of the sampling offsets than float64 (outputs still agree)",
            },
            "zero_grad_ok": {
                f"{branch}.query_norm": "the official initialisation zeroes the weights of sampling_offsets "
                "and attention_weights, the only layers that read the normalised query, so query_norm gets "
                "no gradient at init"
                for branch in ("vit_cross", "conv_cross")
            },
            "gradcheck_perturb": {
                f"{branch}.attn.sampling_offsets": "the official initialisation puts every sampling point "
                "on a pixel centre, where bilinear sampling has a kink in the sampling location"
                for branch in ("vit_cross", "conv_cross")
            },
        },
    )
)
class DBSAMFusion(CrossAttention):
    """DB-SAM bilateral cross-attention + fusion: ``x (B, N, C)`` ViT tokens on ``query_size``,
    ``context (B, M, L C)`` conv levels on ``size`` -> fused ViT tokens ``(B, N, C)``.

    Args:
        dim: C, shared by both branches.
        num_heads: deformable attention heads; must divide ``dim``.
        levels: L conv-branch levels (4 in the released config).
        num_points: sampling points per head and level (4 officially).
        expand_ratio: FFN hidden width as a multiple of C (4 officially).
        reduction: channel-gate bottleneck C / r of the fusion block (12 officially).
        channel_attention: apply the ViT-branch channel-attention block (CAB) first.
        attn_drop: dropout after deformable attention (training only).
        proj_drop: dropout inside the FFNs (training only).
    """

    context_spatial_dims = 2

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        levels: int = 1,
        num_points: int = 4,
        expand_ratio: float = 4.0,
        reduction: int = 12,
        channel_attention: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_int(levels, "levels")
        check_int(num_points, "num_points")
        check_float(expand_ratio, "expand_ratio", positive=True)
        if check_int(reduction, "reduction") > dim:
            raise ValueError(f"reduction={reduction} must not exceed dim={dim}")
        check_bool(channel_attention, "channel_attention")
        drops = (check_rate(attn_drop, "attn_drop"), check_rate(proj_drop, "proj_drop"))
        self.dim, self.context_dim, self.levels = dim, levels * dim, levels
        self.level_embed = nn.Parameter(torch.zeros(levels, dim))
        self.cab = _ChannelAttentionBlock(dim) if channel_attention else None
        self.vit_cross = _CrossBlock(dim, num_heads, levels, num_points, expand_ratio, drops)
        self.conv_cross = _CrossBlock(dim, num_heads, 1, num_points, expand_ratio, drops)
        self.merge = nn.Conv2d(levels * dim, dim, 1)
        self.fusion = _Fusion(dim, reduction, expand_ratio)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official adapter's initialisation (``_init_weights`` then ``_init_deform_weights``)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DeformableAttention):
                m.reset_parameters()

    def _query_size(self, x: torch.Tensor, size: tuple[int, int], query_size: Any) -> tuple[int, int]:
        if query_size is None:
            if x.shape[1] != size[0] * size[1]:
                raise ValueError(
                    f"query_size is required: x has {x.shape[1]} tokens, not the context grid size={size}"
                )
            return size
        hq, wq = check_size(query_size, x.shape[1], spatial_dims=2, name="query_size")
        return hq, wq

    def interact(
        self,
        x: torch.Tensor,
        levels: list[torch.Tensor],
        q_shape: tuple[int, int],
        c_shape: tuple[int, int],
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One bilateral stage: ``x (B, N, C)`` and ``levels [(B, M, C)] * L`` -> updated both."""
        v = x if self.cab is None else self.cab(x, q_shape)
        padding = None if mask is None else mask.repeat(1, self.levels)
        x_new = self.vit_cross(v, [q_shape], torch.cat(levels, dim=1), [c_shape] * self.levels, padding)
        conv = self.conv_cross(torch.cat(levels, dim=1), [c_shape] * self.levels, v, [q_shape])
        return x_new, list(conv.chunk(self.levels, dim=1))

    def compute(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        size: tuple[int, ...] | None,
        *,
        query_size: Any = None,
    ) -> torch.Tensor:
        h, w = size  # type: ignore[misc]  # validated by CrossAttention (context_spatial_dims == 2)
        c_shape = (h, w)
        q_shape = self._query_size(x, c_shape, query_size)
        b, m, _ = context.shape
        split = context.view(b, m, self.levels, self.dim).unbind(2)
        levels = [t + e for t, e in zip(split, self.level_embed)]
        x_new, levels = self.interact(x, levels, q_shape, c_shape, mask)
        conv = self.merge(torch.cat([_grid(t, c_shape) for t in levels], dim=1))
        if c_shape != q_shape:
            conv = F.interpolate(conv, size=q_shape, mode="bilinear", align_corners=False)
        return self.fusion(x_new, _tokens(conv))

    def example_kwargs(
        self,
        batch: int,
        size: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device | str | None,
        generator: torch.Generator | None,
    ) -> dict[str, Any]:
        """The ViT grid of ``x`` (``query_size``): ``size`` itself, or for a token count ``(N,)`` (the
        benchmark's queries) the most nearly square ``(h, N / h)`` grid."""
        if len(size) == 2:
            return {"query_size": tuple(size)}
        n = size[0]
        h = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        return {"query_size": (h, n // h)}
