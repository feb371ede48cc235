"""Official Agent-PVT format: ``agent_transformer/models/agent_pvt.py::AgentAttention``.

Constructor ``AgentAttention(dim, num_patches, num_heads=8, qkv_bias=False, qk_scale=None,
attn_drop=0., proj_drop=0., sr_ratio=1, agent_num=49)``, called as ``module(x, H, W)``.
The reference grid is ``sqrt(num_patches)`` square; ``qk_scale`` is ignored officially and here.
:func:`convert_agent_pvt` maps the checkpoint to :class:`attnzoo.mechanisms.token_mixer.
agent_attention.AgentAttentionPVT` (same ``q``/``kv``/``sr``/``norm`` keys; biases lose their
singleton axes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.token_mixer.agent_attention import AgentAttentionPVT
from attnzoo.official import OfficialRun, adapter, load_converted
from attnzoo.official.agent_attention_deit import convert_agent_bias_keys

__all__ = ["convert_agent_pvt"]


def convert_agent_pvt(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Agent-PVT ``AgentAttention`` state_dict -> attnzoo ``AgentAttentionPVT`` state_dict."""
    out = convert_agent_bias_keys(state_dict)
    for prefix in ("q", "kv", "sr", "norm"):
        for suffix in ("weight", "bias"):
            key = f"{prefix}.{suffix}"
            if key in state_dict:
                out[key] = state_dict[key]
    return out


@adapter("agent_attention_pvt")
def load_agent_pvt(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    side = math.isqrt(int(constructor["num_patches"]))
    module = AgentAttentionPVT(
        int(constructor["dim"]),
        int(constructor.get("num_heads", 8)),
        agent_num=int(constructor.get("agent_num", 49)),
        window=side,
        sr_ratio=int(constructor.get("sr_ratio", 1)),
        qkv_bias=bool(constructor.get("qkv_bias", False)),
        attn_drop=float(constructor.get("attn_drop", 0.0)),
        proj_drop=float(constructor.get("proj_drop", 0.0)),
    )
    dtype = state_dict["proj.weight"].dtype
    load_converted(module.to(dtype), convert_agent_pvt(state_dict))

    def call(m: AgentAttentionPVT, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, ...]:
        return (m(x, size=(int(H), int(W))),)

    return OfficialRun(module.eval(), call)
