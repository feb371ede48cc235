"""Official FSG ViT block: ``modules/models/fsg_vision_transformers.py::Block`` of
cosmoimd/feature-selection-gates.

Constructor ``Block(dim, num_heads, mlp_ratio=4., qkv_bias=False, qk_norm=False, proj_drop=0.,
attn_drop=0., init_values=None, drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm,
mlp_layer=Mlp)``. Keys map one-to-one onto :class:`HardGatedViTBlock` except the gates:
``fsag_rgb_ls1`` -> ``gate1.logits`` and ``fsag_rgb_ls2`` -> ``gate2.logits`` (raw logits, the
sigmoid is applied in forward, in both codes). ``init_values`` and ``drop_path`` are accepted and
ignored, as officially (their layers are commented out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from attnzoo.mechanisms.feature_map.hard_attention_gate import HardGatedViTBlock
from attnzoo.official import Choice, Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap

__all__ = ["convert_fsg_block_state_dict"]

_KEYS = KeyMap(renames=(("fsag_rgb_ls1", "gate1.logits"), ("fsag_rgb_ls2", "gate2.logits")))
BLOCK = Signature(
    dim=int,
    num_heads=int,
    mlp_ratio=(float, 4.0),
    qkv_bias=(bool, False),
    qk_norm=(bool, False),
    proj_drop=(float, 0.0),
    attn_drop=(float, 0.0),
    init_values=(float | None, None),
    drop_path=(float, 0.0),
    act_layer=(Choice(nn.GELU), nn.GELU),
    norm_layer=(Choice(nn.LayerNorm), nn.LayerNorm),
    unsupported=("mlp_layer",),
)


def convert_fsg_block_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official FSG ``Block`` state_dict -> :class:`HardGatedViTBlock` state_dict."""
    return _KEYS.to_attnzoo(state_dict)


@adapter("hard_attention_gate", {"Block": BLOCK})
def load_fsg_block(kw: dict[str, Any], symbol: str) -> Conversion:
    module = HardGatedViTBlock(
        kw["dim"],
        kw["num_heads"],
        mlp_ratio=kw["mlp_ratio"],
        qkv_bias=kw["qkv_bias"],
        qk_norm=kw["qk_norm"],
        attn_drop=kw["attn_drop"],
        proj_drop=kw["proj_drop"],
    )
    return Conversion(module, lambda m, x: (m(x),), _KEYS.to_attnzoo, _KEYS.to_official)
