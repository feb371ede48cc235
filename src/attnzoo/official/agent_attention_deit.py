"""Official Agent-DeiT format: ``agent_transformer/models/agent_deit.py::AgentAttention``.

Constructor ``AgentAttention(dim, num_heads=8, qkv_bias=False, attn_drop=0., proj_drop=0.,
agent_num=49, window=14)``; input ``(B, 1 + window**2, C)`` with the class token first.
:func:`convert_agent_deit` maps the checkpoint to :class:`attnzoo.mechanisms.token_mixer.
agent_attention.AgentAttention`: the fused ``qkv`` ([q | k | v] rows) splits into ``q`` and ``kv``,
and the 5-D/4-D row, column and class-token biases lose their singleton axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.token_mixer.agent_attention import AgentAttention
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_agent_bias_keys", "convert_agent_deit"]


def convert_agent_bias_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official agent-attention biases -> attnzoo shapes (shared by the DeiT and PVT formats)."""
    out = {}
    for key in ("an_bias", "na_bias"):
        out[key] = state_dict[key]
    out["ah_bias"] = state_dict["ah_bias"][0, :, :, :, 0]
    out["aw_bias"] = state_dict["aw_bias"][0, :, :, 0, :]
    out["ha_bias"] = state_dict["ha_bias"][0, :, :, 0, :]
    out["wa_bias"] = state_dict["wa_bias"][0, :, 0, :, :]
    for key in ("dwc.weight", "dwc.bias", "proj.weight", "proj.bias"):
        out[key] = state_dict[key]
    return out


def convert_agent_deit(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Agent-DeiT ``AgentAttention`` state_dict -> attnzoo ``AgentAttention`` state_dict."""
    out = convert_agent_bias_keys(state_dict)
    dim = state_dict["proj.weight"].shape[0]
    for suffix in ("weight", "bias"):
        fused = state_dict.get(f"qkv.{suffix}")
        if fused is not None:
            out[f"q.{suffix}"] = fused[:dim]
            out[f"kv.{suffix}"] = fused[dim:]
    out["ac_bias"] = state_dict["ac_bias"][0]
    out["ca_bias"] = state_dict["ca_bias"][0]
    return out


@adapter("agent_attention_deit")
def load_agent_deit(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    module = AgentAttention(
        int(constructor["dim"]),
        int(constructor.get("num_heads", 8)),
        agent_num=int(constructor.get("agent_num", 49)),
        window=int(constructor.get("window", 14)),
        num_prefix_tokens=1,
        qkv_bias=bool(constructor.get("qkv_bias", False)),
        attn_drop=float(constructor.get("attn_drop", 0.0)),
        proj_drop=float(constructor.get("proj_drop", 0.0)),
    )
    dtype = state_dict["proj.weight"].dtype
    load_converted(module.to(dtype), convert_agent_deit(state_dict))

    def call(m: AgentAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        side = math.isqrt(x.shape[1] - 1)
        return (m(x, size=(side, side)),)

    return OfficialRun(module.eval(), call)
