"""Official NiNformer format: ``ninformer.py`` of Abdullah-88/NiNformer, classes
``MixerGatingUnit(dim, seq_len, token_dim, channel_dim, dropout)`` and
``NiNBlock(d_model, d_ffn, seq_len, dropout)``.

Keys (MixerGatingUnit): ``Mixer.token_mix.0.*`` (LayerNorm), ``Mixer.token_mix.2.net.{0,3}.*``
(token MLP), ``Mixer.channel_mix.0.*`` (LayerNorm), ``Mixer.channel_mix.1.net.{0,3}.*`` (channel
MLP), ``proj.*``; NiNBlock adds the ``mgu.`` prefix, ``norm.*`` and ``ffn.net.{0,3}.*``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from attnzoo.mechanisms.token_mixer.ninformer_gating import NiNformerBlock, NiNformerGating
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_ninformer_block", "convert_ninformer_gating"]

_GATING_KEYS = {
    "Mixer.token_mix.0.": "token_norm.",
    "Mixer.token_mix.2.net.0.": "token_mlp.0.",
    "Mixer.token_mix.2.net.3.": "token_mlp.3.",
    "Mixer.channel_mix.0.": "channel_norm.",
    "Mixer.channel_mix.1.net.0.": "channel_mlp.0.",
    "Mixer.channel_mix.1.net.3.": "channel_mlp.3.",
    "proj.": "proj.",
}


def convert_ninformer_gating(
    state_dict: Mapping[str, torch.Tensor], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Official ``MixerGatingUnit`` keys (under ``prefix``) -> :class:`NiNformerGating` keys."""
    return {
        ours + p: state_dict[f"{prefix}{theirs}{p}"]
        for theirs, ours in _GATING_KEYS.items()
        for p in ("weight", "bias")
    }


def convert_ninformer_block(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``NiNBlock`` keys -> :class:`NiNformerBlock` keys."""
    out = {f"gating.{k}": v for k, v in convert_ninformer_gating(state_dict, "mgu.").items()}
    for p in ("weight", "bias"):
        out[f"norm.{p}"] = state_dict[f"norm.{p}"]
        out[f"ffn.0.{p}"] = state_dict[f"ffn.net.0.{p}"]
        out[f"ffn.3.{p}"] = state_dict[f"ffn.net.3.{p}"]
    return out


@adapter("ninformer_gating")
def load_ninformer_gating(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    symbol = symbol or ("NiNBlock" if "norm.weight" in state_dict else "MixerGatingUnit")
    dropout = float(constructor.get("dropout", 0.0))
    module: nn.Module
    if symbol == "MixerGatingUnit":
        token_w = state_dict["Mixer.token_mix.2.net.0.weight"]
        found = {
            "dim": int(state_dict["proj.weight"].shape[0]),
            "seq_len": int(token_w.shape[1]),
            "token_dim": int(token_w.shape[0]),
            "channel_dim": int(state_dict["Mixer.channel_mix.1.net.0.weight"].shape[0]),
        }
        module = NiNformerGating(**found, dropout=dropout)
        converted = convert_ninformer_gating(state_dict)
    elif symbol == "NiNBlock":
        ffn_w = state_dict["ffn.net.0.weight"]
        found = {
            "d_model": int(ffn_w.shape[1]),
            "d_ffn": int(ffn_w.shape[0]),
            "seq_len": int(state_dict["mgu.Mixer.token_mix.2.net.0.weight"].shape[1]),
        }
        module = NiNformerBlock(found["d_model"], found["d_ffn"], found["seq_len"], dropout=dropout)
        converted = convert_ninformer_block(state_dict)
    else:
        raise ValueError(f"the ninformer_gating format covers MixerGatingUnit and NiNBlock, got {symbol!r}")
    for key, want in found.items():
        if key in constructor and int(constructor[key]) != want:
            raise ValueError(f"{key}={constructor[key]} disagrees with the checkpoint ({want})")
    dtype = next(iter(converted.values())).dtype
    load_converted(module.to(dtype), converted)
    return OfficialRun(module.eval(), lambda m, x: (m(x),))
