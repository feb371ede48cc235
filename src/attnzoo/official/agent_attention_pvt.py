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
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.agent_attention_deit import AGENT_BIASES

__all__ = ["convert_agent_pvt"]


def convert_agent_pvt(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Agent-PVT ``AgentAttention`` state_dict -> attnzoo ``AgentAttentionPVT`` state_dict."""
    return AGENT_BIASES.to_attnzoo(state_dict)


def _call(m: AgentAttentionPVT, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, ...]:
    return (m(x, size=(int(H), int(W))),)


AGENT_PVT = Signature(
    dim=int,
    num_patches=int,
    num_heads=(int, 8),
    qkv_bias=(bool, False),
    qk_scale=(float | None, None),
    attn_drop=(float, 0.0),
    proj_drop=(float, 0.0),
    sr_ratio=(int, 1),
    agent_num=(int, 49),
)


@adapter("agent_attention_pvt", {"AgentAttention": AGENT_PVT})
def load_agent_pvt(kw: dict[str, Any], symbol: str) -> Conversion:
    module = AgentAttentionPVT(
        kw["dim"],
        kw["num_heads"],
        agent_num=kw["agent_num"],
        window=math.isqrt(kw["num_patches"]),
        sr_ratio=kw["sr_ratio"],
        qkv_bias=kw["qkv_bias"],
        attn_drop=kw["attn_drop"],
        proj_drop=kw["proj_drop"],
    )
    return Conversion(module, _call, AGENT_BIASES.to_attnzoo, AGENT_BIASES.to_official)
