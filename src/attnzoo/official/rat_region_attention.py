"""Official RAT format: ``Model_RAT.py::RegionAttention(n_feat, num_heads, bias=True)``.

The official forward is ``module(x (B, C, H, W), mask (B, HW, HW))`` where ``mask`` is the additive
mask of ``RAT.correlation_mask_oneBYone`` (0 within a region, -1000 across regions).
:func:`convert_rat_region_attention` squeezes the 1x1 convolution weights (``qkv``,
``project_out``) into the attnzoo ``nn.Linear`` layers ``qkv``, ``proj``;
:func:`region_map_from_mask` recovers integer labels from an official mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.kernels.grouped import segment_mask
from attnzoo.mechanisms.token_mixer.region_attention import RegionAttention
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap, singletons

__all__ = ["convert_rat_region_attention", "region_map_from_mask"]

_KEYS = KeyMap(
    renames=(("project_out.", "proj."),),
    views={"qkv.weight": singletons(2, 3), "proj.weight": singletons(2, 3)},
)


def convert_rat_region_attention(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``RegionAttention`` state_dict -> attnzoo ``RegionAttention`` state_dict."""
    return _KEYS.to_attnzoo(state_dict)


def region_map_from_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, HW, HW)`` official additive mask -> ``(B, H, W)`` labels (the first pixel of each
    region). Raises ``ValueError`` if the zero pattern is not a partition into regions."""
    same = mask == 0
    labels = same.to(torch.uint8).argmax(dim=-1)
    if not torch.equal(segment_mask(labels).squeeze(1), same):
        raise ValueError("mask is not a region mask: its zero entries do not partition the pixels")
    return labels.view(mask.shape[0], *size)


def _call(
    m: RegionAttention, x: torch.Tensor, mask: torch.Tensor, region_map: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    b, c, h, w = x.shape
    labels = region_map_from_mask(mask, (h, w))
    if region_map is not None and not torch.equal(
        segment_mask(region_map.flatten(1)), segment_mask(labels.flatten(1))
    ):
        raise ValueError("region_map disagrees with mask")
    tokens = x.flatten(2).transpose(1, 2)
    out = m(tokens, size=(h, w), region_map=labels)
    return (out.transpose(1, 2).reshape(b, c, h, w),)


@adapter("rat_region_attention", {"RegionAttention": Signature(n_feat=int, num_heads=int, bias=(bool, True))})
def load_rat_region_attention(kw: dict[str, Any], symbol: str) -> Conversion:
    module = RegionAttention(kw["n_feat"], kw["num_heads"], bias=kw["bias"])
    return Conversion(module, _call, _KEYS.to_attnzoo, _KEYS.to_official)
