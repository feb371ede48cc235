"""Official PAT formats of haiduo/PartialNet (``models/partialnet.py``), the reference for PATNet.

* ``Partial_conv3(dim, n_div, forward_type, use_attn='', channel_type='', patnet_t0=False)`` with
  ``use_attn`` and ``channel_type='se'`` -> ``pat_ch``;
* ``Partial_conv3(..., channel_type='self', patnet_t0)`` -> ``pat_sf`` (4 heads if ``patnet_t0``
  else 6);
* ``partial_spatial_attn_layer_reverse(dim, n_head, partial)`` -> ``pat_sp``.

``forward(x (B, C, H, W)) -> (B, C, H, W)`` for all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.feature_map.pat_ch import PartialChannelAttention
from attnzoo.mechanisms.feature_map.pat_sf import PartialSelfAttention
from attnzoo.mechanisms.feature_map.pat_sp import PartialSpatialAttention
from attnzoo.official import CheckpointError, Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap

__all__ = ["convert_pat_ch", "convert_pat_sf", "convert_pat_sp"]

_CH = KeyMap(renames=(("partial_conv3.", "partial_conv."), ("attn.bn.", "style_bn.")))
_SF = KeyMap(
    renames=(
        ("partial_conv3.", "partial_conv."),
        ("attn.qkv.", "qkv."),
        ("attn.proj.", "proj."),
        ("attn.rpe_k.lookup_table_bias", "rpe_table"),
    )
)
_SP = KeyMap(renames=(("conv_attn.", "attn."), ("norm.", "attn_norm."), ("norm2.", "conv_norm.")))
_CFC = "attn.cfc1.weight"  # (C', C', 1, 2): SRM's taps on [mean, std]
_SIGNATURES = {
    "Partial_conv3": Signature(
        dim=int,
        n_div=int,
        forward_type=str,
        use_attn=(bool | str, ""),
        channel_type=(str, ""),
        patnet_t0=(bool, False),
    ),
    "partial_spatial_attn_layer_reverse": Signature(dim=int, n_head=int, partial=(float, 0.5)),
}


def convert_pat_ch(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Partial_conv3(channel_type='se')`` keys -> :class:`PartialChannelAttention` keys."""
    out = _CH.to_attnzoo({k: v for k, v in state_dict.items() if k != _CFC})
    cfc = state_dict[_CFC]
    out["style_fc.weight"] = torch.cat([cfc[:, :, 0, 0], cfc[:, :, 0, 1]], dim=1)
    return out


def _pat_ch_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = _CH.to_official({k: v for k, v in state_dict.items() if k != "style_fc.weight"})
    mean_tap, std_tap = state_dict["style_fc.weight"].chunk(2, dim=1)
    out[_CFC] = torch.stack([mean_tap, std_tap], dim=-1)[:, :, None, :]
    return out


def convert_pat_sf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Partial_conv3(channel_type='self')`` keys -> :class:`PartialSelfAttention` keys."""
    return _SF.to_attnzoo(state_dict)


def convert_pat_sp(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``partial_spatial_attn_layer_reverse`` keys -> :class:`PartialSpatialAttention` keys."""
    return _SP.to_attnzoo(state_dict)


def _call(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor]:
    return (m(x),)


@adapter("pat_partial_attention", _SIGNATURES)
def load_pat(kw: dict[str, Any], symbol: str) -> Conversion:
    if symbol == "partial_spatial_attn_layer_reverse":
        module = PartialSpatialAttention(kw["dim"], kw["partial"], kw["n_head"])
        return Conversion(module, _call, convert_pat_sp, _SP.to_official)
    if not kw["use_attn"]:
        raise CheckpointError.argument(
            "use_attn", "Partial_conv3 without use_attn is a plain partial convolution, not an attention"
        )
    if kw["channel_type"] == "se":
        return Conversion(
            PartialChannelAttention(kw["dim"], kw["n_div"]), _call, convert_pat_ch, _pat_ch_to_official
        )
    if kw["channel_type"] == "self":
        heads = 4 if kw["patnet_t0"] else 6
        module = PartialSelfAttention(kw["dim"], kw["n_div"], heads, attn_drop=0.1, proj_drop=0.1)
        return Conversion(module, _call, convert_pat_sf, _SF.to_official)
    raise CheckpointError.argument(
        "channel_type", f"Partial_conv3 channel_type must be 'se' or 'self', got {kw['channel_type']!r}"
    )
