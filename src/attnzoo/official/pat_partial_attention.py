"""Official PAT formats of haiduo/PartialNet (``models/partialnet.py``), the reference for PATNet.

* ``Partial_conv3(dim, n_div, forward_type, use_attn=True, channel_type='se')`` -> ``pat_ch``;
* ``Partial_conv3(..., channel_type='self', patnet_t0)`` -> ``pat_sf`` (4 heads if ``patnet_t0``
  else 6);
* ``partial_spatial_attn_layer_reverse(dim, n_head, partial)`` -> ``pat_sp``.

``forward(x (B, C, H, W)) -> (B, C, H, W)`` for all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from attnzoo.mechanisms.feature_map.pat_ch import PartialChannelAttention
from attnzoo.mechanisms.feature_map.pat_sf import PartialSelfAttention
from attnzoo.mechanisms.feature_map.pat_sp import PartialSpatialAttention
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_pat_ch", "convert_pat_sf", "convert_pat_sp"]

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(state_dict: Mapping[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.{k}": state_dict[f"{src}.{k}"] for k in _BN if f"{src}.{k}" in state_dict}


def convert_pat_ch(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Partial_conv3(channel_type='se')`` keys -> :class:`PartialChannelAttention` keys."""
    cfc = state_dict["attn.cfc1.weight"]  # (C', C', 1, 2): taps on [mean, std]
    out = {
        "partial_conv.weight": state_dict["partial_conv3.weight"],
        "style_fc.weight": torch.cat([cfc[:, :, 0, 0], cfc[:, :, 0, 1]], dim=1),
    }
    out.update(_bn(state_dict, "attn.bn", "style_bn"))
    out.update(_bn(state_dict, "norm", "norm"))
    return out


def convert_pat_sf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Partial_conv3(channel_type='self')`` keys -> :class:`PartialSelfAttention` keys."""
    keys = {
        "partial_conv.weight": "partial_conv3.weight",
        "norm.weight": "norm.weight",
        "norm.bias": "norm.bias",
        "qkv.weight": "attn.qkv.weight",
        "proj.weight": "attn.proj.weight",
        "proj.bias": "attn.proj.bias",
        "rpe_table": "attn.rpe_k.lookup_table_bias",
    }
    return {ours: state_dict[theirs] for ours, theirs in keys.items()}


def convert_pat_sp(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``partial_spatial_attn_layer_reverse`` keys -> :class:`PartialSpatialAttention` keys."""
    out = {"attn.weight": state_dict["conv_attn.weight"], "conv.weight": state_dict["conv.weight"]}
    out.update(_bn(state_dict, "norm", "attn_norm"))
    out.update(_bn(state_dict, "norm2", "conv_norm"))
    return out


def _build(constructor: Mapping[str, Any], symbol: str) -> tuple[nn.Module, Any]:
    if symbol == "partial_spatial_attn_layer_reverse":
        module = PartialSpatialAttention(
            int(constructor["dim"]), float(constructor.get("partial", 0.5)), int(constructor["n_head"])
        )
        return module, convert_pat_sp
    if symbol != "Partial_conv3":
        raise ValueError(
            "pat_partial_attention covers Partial_conv3 and partial_spatial_attn_layer_reverse, "
            f"got {symbol!r}"
        )
    if not constructor.get("use_attn"):
        raise ValueError("Partial_conv3 without use_attn is a plain partial convolution, not an attention")
    dim, n_div = int(constructor["dim"]), int(constructor["n_div"])
    channel_type = constructor.get("channel_type")
    if channel_type == "se":
        return PartialChannelAttention(dim, n_div), convert_pat_ch
    if channel_type == "self":
        heads = 4 if constructor.get("patnet_t0", False) else 6
        module = PartialSelfAttention(dim, n_div, heads, attn_drop=0.1, proj_drop=0.1)
        return module, convert_pat_sf
    raise ValueError(f"Partial_conv3 channel_type must be 'se' or 'self', got {channel_type!r}")


@adapter("pat_partial_attention")
def load_pat(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    module, convert = _build(constructor, symbol or "Partial_conv3")
    dtype = next(v.dtype for v in state_dict.values() if v.is_floating_point())
    load_converted(module.to(dtype), convert(state_dict))
    return OfficialRun(module.eval(), lambda m, x: (m(x),))
