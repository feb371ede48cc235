"""Official BiFormer format: ``ops/bra_legacy.py::BiLevelRoutingAttention`` (NHWC input).

Constructor ``BiLevelRoutingAttention(dim, num_heads=8, n_win=7, qk_dim=None, qk_scale=None,
kv_per_win=4, kv_downsample_ratio=4, kv_downsample_kernel=None, kv_downsample_mode='identity',
topk=4, param_attention='qkvo', param_routing=False, diff_routing=False, soft_routing=False,
side_dwconv=3, auto_pad=False)``; forward ``module(x (B, H, W, C))``.

:func:`convert_biformer_bra` maps the checkpoint keys to
:class:`attnzoo.mechanisms.token_mixer.biformer_bra.BiLevelRoutingAttention`: ``qkv.qkv.*`` ->
``qkv.*`` (rows stay ``[q | k | v]``), ``wo.*`` -> ``proj.*``, ``lepe.*`` unchanged. Official
options attnzoo does not implement (kv down-sampling, parametric/differentiable/soft routing)
raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.token_mixer.biformer_bra import BiLevelRoutingAttention
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["build_biformer_bra", "convert_biformer_bra"]

_KEYS = {"qkv.qkv.": "qkv.", "wo.": "proj.", "lepe.": "lepe."}
_UNSUPPORTED = {
    "kv_downsample_mode": "identity",
    "param_routing": False,
    "diff_routing": False,
    "soft_routing": False,
}


def convert_biformer_bra(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``BiLevelRoutingAttention`` state_dict -> attnzoo state_dict."""
    out = {}
    for key, value in state_dict.items():
        prefix = next((p for p in _KEYS if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"unexpected key {key!r} in an official BiLevelRoutingAttention state_dict")
        out[_KEYS[prefix] + key[len(prefix) :]] = value
    return out


def build_biformer_bra(constructor: Mapping[str, Any]) -> BiLevelRoutingAttention:
    """The attnzoo module equivalent to the official constructor kwargs (random weights)."""
    for name, supported in _UNSUPPORTED.items():
        if constructor.get(name, supported) != supported:
            raise ValueError(f"official option {name}={constructor[name]!r} is not implemented in attnzoo")
    mode = constructor.get("param_attention", "qkvo")
    if mode not in ("qkvo", "qkv"):
        raise ValueError(f"param_attention must be 'qkvo' or 'qkv', got {mode!r}")
    qk_scale = constructor.get("qk_scale")
    return BiLevelRoutingAttention(
        int(constructor["dim"]),
        int(constructor.get("num_heads", 8)),
        int(constructor.get("n_win", 7)),
        int(constructor.get("topk", 4)),
        qk_dim=constructor.get("qk_dim") or None,
        qk_scale=float(qk_scale) if qk_scale else None,
        side_dwconv=int(constructor.get("side_dwconv", 3)),
        out_proj=mode == "qkvo",
        auto_pad=bool(constructor.get("auto_pad", False)),
    )


@adapter("biformer_bra")
def load_biformer_bra(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    module = build_biformer_bra(constructor)
    dtype = state_dict["qkv.qkv.weight"].dtype
    load_converted(module.to(dtype), convert_biformer_bra(state_dict))

    def call(
        m: BiLevelRoutingAttention, x: torch.Tensor, ret_attn_mask: bool = False
    ) -> tuple[torch.Tensor, ...]:
        if ret_attn_mask:
            raise ValueError("ret_attn_mask=True (routing/attention outputs) is not supported")
        b, h, w, c = x.shape
        return (m(x.reshape(b, h * w, c), size=(h, w)).reshape(b, h, w, c),)

    return OfficialRun(module.eval(), call)
