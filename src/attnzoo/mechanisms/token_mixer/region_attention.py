"""Region attention (Yang et al., "Region Attention Transformer for Medical Image Restoration",
MICCAI 2024, Sec. 2.2, RA module).

Given an integer region map ``M (H, W)`` (e.g. from SAM masks), every token attends only to the
tokens of its own region:

    O_i = sum_{j : M_j = M_i} softmax_j(scale q_i . k_j) v_j,    out = W_o O

with ``Q, K, V = X W_{q,k,v}``, multi-head over contiguous channel chunks and, as in the authors'
code, ``scale = num_heads ** -0.5``. The official code builds a dense ``(HW)^2`` additive mask
(-1000 across regions) in a Python loop and attends densely; attnzoo sorts tokens by region and
attends within regions (:func:`attnzoo.kernels.grouped.segment_attention`), so memory is
``O(N C)`` and time ``O(N C^2 + sum_g |g|^2 C)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_float, check_tensor
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.kernels.grouped import segment_attention
from attnzoo.registry import Card, register

__all__ = ["RegionAttention", "check_region_map"]


def check_region_map(region_map: object, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """Validate an integer ``(B, H, W)`` region map and return it."""
    if region_map is None:
        raise ValueError("region_map is required: pass region_map=(B, H, W) integer region labels")
    check_tensor(region_map, "region_map", ndim=3, floating=False, finite=False)
    if region_map.dtype == torch.bool or region_map.is_floating_point() or region_map.is_complex():
        raise TypeError(f"region_map must be an integer tensor, got dtype {region_map.dtype}")
    want = (batch, *size)
    if tuple(region_map.shape) != want:
        raise ValueError(f"region_map must have shape (B, H, W) = {want}, got {tuple(region_map.shape)}")
    return region_map


@register(
    Card(
        name="region_attention",
        aliases=("rat", "rat_region_attention"),
        family="token_mixer",
        summary="Softmax attention restricted to the tokens of the same region of an integer region map.",
        paper="Region Attention Transformer for Medical Image Restoration",
        arxiv="2407.09268",
        year=2024,
        official_repo="Yaziwel/Region-Attention-Transformer-for-Medical-Image-Restoration",
        official_commit="473a37924b6435b8e2b2c425c876adcc14d87125",
        parity="official",
        parity_fixtures=("rat_region_attention",),
        time_complexity="O(N C^2 + sum_regions |g|^2 C) (bucket padding costs at most bucket_ratio^2)",
        memory_complexity="O(N C) (no N x N tensor; O(h N^2) when capturing weights)",
        layouts=("BNC",),
        spatial_dims=2,
        extra_inputs=("region_map",),
        ledger=(
            "Layout: attnzoo takes x (B, H*W, C), size=(H, W) and region_map (B, H, W) integer "
            "labels; the official RegionAttention takes x (B, C, H, W) and a dense additive mask "
            "(B, HW, HW) built by RAT.correlation_mask_oneBYone. The adapter accepts the official "
            "mask and recovers the labels from it when no region map is given.",
            "Efficiency: the official code materialises the (HW)^2 mask (Python loop over labels) and "
            "(B, h, HW, HW) scores; attnzoo sorts tokens by region, packs regions of similar size into "
            "padded buckets and runs SDPA per bucket: O(N C) memory, no N x N tensor.",
            "Scale: num_heads ** -0.5 by default, as the official code (not head_dim ** -0.5); "
            "pass scale= to change it.",
            "Masking: exact (other regions get weight 0); the official adds -1000 to cross-region "
            "logits, which equals exact masking unless logits differ by ~1000 (then it leaks).",
            "Labels: any integers, gaps allowed, regions need not be connected; the official mask "
            "builder needs non-negative labels and loops over 0..max(label).",
            "Resolution: the full RAT nearest-downsamples the image-resolution map by 4 to the "
            "attention resolution; attnzoo takes the map at the token grid and raises on a shape "
            "mismatch (downsample with F.interpolate(mode='nearest') before calling).",
            "Projections: official 1x1 Conv2d qkv/project_out become nn.Linear qkv/proj (weights "
            "squeezed); `bias` switches both biases, as in the official constructor.",
            "Under attnzoo.capture the dense masked (B, h, N, N) matrix is computed and recorded.",
            "In a timm ViT (attnzoo.integrations.timm) the mixer sees the H x W patch tokens only: class "
            "and register tokens get a separate global softmax attention over all tokens (own qkv/proj, "
            "timm's layout), so patch tokens never read them (in timm's Attention they do).",
            "vit_attention takes one fixed region_map (H, W) for every image, which timm's attention "
            "call (x, attn_mask, is_causal) cannot pass per image.",
            "torch.export traces the same dense masked form (the packed buckets' shapes depend on the "
            "region labels), so an exported program holds (B, h, N, N) scores; outputs are unchanged.",
        ),
        tiny={"dim": 16, "num_heads": 2},
        sweep={"num_heads": (1, 2, 4), "size": (2, 8)},
        bench={"dim": 256, "num_heads": 8},
    )
)
class RegionAttention(TokenMixer):
    """Region attention on ``x (B, H*W, C)`` with ``size=(H, W)`` and ``region_map (B, H, W)``
    integer labels; returns ``(B, H*W, C)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        bias: biases of the q/k/v and output projections.
        scale: score scale (default ``num_heads ** -0.5``, the official convention).
        bucket_ratio: regions whose sizes are within this factor share one padded SDPA call.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        bias: bool = True,
        scale: float | None = None,
        bucket_ratio: float = 1.25,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_bool(bias, "bias")
        if scale is not None:
            check_float(scale, "scale", positive=True)
        check_float(bucket_ratio, "bucket_ratio", minimum=1.0)
        self.dim = dim
        self.num_heads = num_heads
        self.scale = float(scale) if scale is not None else num_heads**-0.5
        self.bucket_ratio = float(bucket_ratio)
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, scale={self.scale:.4g}"

    def compute(  # type: ignore[override]
        self, x: torch.Tensor, size: tuple[int, ...], region_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, _ = x.shape
        region_map = check_region_map(region_map, b, size)
        if region_map.device != x.device:
            raise ValueError(f"region_map is on {region_map.device} but x is on {x.device}")
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)
        out = segment_attention(
            q, k, v, region_map.reshape(b, n), scale=self.scale, bucket_ratio=self.bucket_ratio
        )
        return self.proj(merge_heads(out))

    def example_kwargs(
        self,
        batch: int,
        size: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device | str | None,
        generator: torch.Generator | None,
    ) -> dict[str, Any]:
        """A random region map: ~64 square blocks merged at random into ~32 labels (with gaps),
        so regions differ in size and need not be connected."""
        h, w = size
        side = max(1, round(math.sqrt(h * w) / 8))
        rows, cols = -(-h // side), -(-w // side)
        labels = max(2, rows * cols // 2)
        blocks = torch.randint(0, labels, (batch, rows, cols), generator=generator)
        region = blocks.repeat_interleave(side, 1).repeat_interleave(side, 2)[:, :h, :w]
        return {"region_map": (3 * region + 1).to(device)}
