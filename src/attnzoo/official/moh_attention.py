"""Official MoH-DiT format: ``MoH-DiT/models.py::MoHAttention``.

Constructor ``MoHAttention(dim, num_heads=8, qkv_bias=False, qk_norm=False, attn_drop=0.,
proj_drop=0., norm_layer=nn.LayerNorm, shared_head=0, routed_head=0, head_dim=None)``; input and
output ``(B, N, C)``. :func:`convert_moh` renames the routers (``wg`` -> ``router``, ``wg_1`` ->
``shared_router``, ``wg_0`` -> ``mix_router``); every other key is shared with attnzoo.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from attnzoo.mechanisms.token_mixer.moh_attention import MoHAttention
from attnzoo.official import Choice, Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap

__all__ = ["convert_moh"]

_KEYS = KeyMap(renames=(("wg.", "router."), ("wg_1.", "shared_router."), ("wg_0.", "mix_router.")))
MOH = Signature(
    dim=int,
    num_heads=(int, 8),
    qkv_bias=(bool, False),
    qk_norm=(bool, False),
    attn_drop=(float, 0.0),
    proj_drop=(float, 0.0),
    norm_layer=(Choice(nn.LayerNorm), nn.LayerNorm),
    shared_head=(int, 0),
    routed_head=(int, 0),
    head_dim=(int | None, None),
)


def convert_moh(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``MoHAttention`` state_dict -> attnzoo ``MoHAttention`` state_dict."""
    return _KEYS.to_attnzoo(state_dict)


@adapter("moh_attention", {"MoHAttention": MOH})
def load_moh(kw: dict[str, Any], symbol: str) -> Conversion:
    module = MoHAttention(
        kw["dim"],
        kw["num_heads"],
        shared_head=kw["shared_head"],
        routed_head=kw["routed_head"],
        head_dim=kw["head_dim"],
        qkv_bias=kw["qkv_bias"],
        qk_norm=kw["qk_norm"],
        attn_drop=kw["attn_drop"],
        proj_drop=kw["proj_drop"],
    )
    return Conversion(module, lambda m, x: (m(x),), _KEYS.to_attnzoo, _KEYS.to_official)
