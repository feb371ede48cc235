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
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap, singletons

__all__ = ["AGENT_BIASES", "convert_agent_deit"]

AGENT_BIASES = KeyMap(
    views={
        "ah_bias": singletons(0, 4),
        "aw_bias": singletons(0, 3),
        "ha_bias": singletons(0, 3),
        "wa_bias": singletons(0, 2),
        "ac_bias": singletons(0),
        "ca_bias": singletons(0),
    }
)
_FUSED = ("qkv.", "q.", "kv.")


def convert_agent_deit(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Agent-DeiT ``AgentAttention`` state_dict -> attnzoo ``AgentAttention`` state_dict."""
    out = AGENT_BIASES.to_attnzoo({k: v for k, v in state_dict.items() if not k.startswith(_FUSED)})
    dim = state_dict["proj.weight"].shape[0]
    for suffix in ("weight", "bias"):
        fused = state_dict.get(f"qkv.{suffix}")
        if fused is not None:
            out[f"q.{suffix}"], out[f"kv.{suffix}"] = fused[:dim], fused[dim:]
    return out


def _to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = AGENT_BIASES.to_official({k: v for k, v in state_dict.items() if not k.startswith(_FUSED)})
    for suffix in ("weight", "bias"):
        if f"q.{suffix}" in state_dict:
            out[f"qkv.{suffix}"] = torch.cat([state_dict[f"q.{suffix}"], state_dict[f"kv.{suffix}"]])
    return out


def _call(m: AgentAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    side = math.isqrt(x.shape[1] - 1)
    return (m(x, size=(side, side)),)


AGENT_DEIT = Signature(
    dim=int,
    num_heads=(int, 8),
    qkv_bias=(bool, False),
    attn_drop=(float, 0.0),
    proj_drop=(float, 0.0),
    agent_num=(int, 49),
    window=(int, 14),
)


@adapter("agent_attention_deit", {"AgentAttention": AGENT_DEIT})
def load_agent_deit(kw: dict[str, Any], symbol: str) -> Conversion:
    module = AgentAttention(
        kw["dim"],
        kw["num_heads"],
        agent_num=kw["agent_num"],
        window=kw["window"],
        num_prefix_tokens=1,
        qkv_bias=kw["qkv_bias"],
        attn_drop=kw["attn_drop"],
        proj_drop=kw["proj_drop"],
    )
    return Conversion(module, _call, convert_agent_deit, _to_official)
