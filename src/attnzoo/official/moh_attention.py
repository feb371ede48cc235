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

from attnzoo.mechanisms.token_mixer.moh_attention import MoHAttention
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_moh"]

_RENAMES = {"wg.": "router.", "wg_1.": "shared_router.", "wg_0.": "mix_router."}


def convert_moh(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``MoHAttention`` state_dict -> attnzoo ``MoHAttention`` state_dict."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


@adapter("moh_attention")
def load_moh(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if constructor.get("norm_layer") not in (None, torch.nn.LayerNorm):
        raise ValueError("only the official default norm_layer=nn.LayerNorm is supported")
    head_dim = constructor.get("head_dim")
    module = MoHAttention(
        int(constructor["dim"]),
        int(constructor.get("num_heads", 8)),
        shared_head=int(constructor.get("shared_head", 0)),
        routed_head=int(constructor.get("routed_head", 0)),
        head_dim=None if head_dim is None else int(head_dim),
        qkv_bias=bool(constructor.get("qkv_bias", False)),
        qk_norm=bool(constructor.get("qk_norm", False)),
        attn_drop=float(constructor.get("attn_drop", 0.0)),
        proj_drop=float(constructor.get("proj_drop", 0.0)),
    )
    dtype = state_dict["proj.weight"].dtype
    load_converted(module.to(dtype), convert_moh(state_dict))
    return OfficialRun(module.eval(), lambda m, x: (m(x),))
