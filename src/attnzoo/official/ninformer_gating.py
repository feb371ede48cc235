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

from attnzoo.mechanisms.token_mixer.ninformer_gating import NiNformerBlock, NiNformerGating
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap

__all__ = ["convert_ninformer_block", "convert_ninformer_gating"]

_GATING = (
    ("Mixer.token_mix.0.", "token_norm."),
    ("Mixer.token_mix.2.net.", "token_mlp."),
    ("Mixer.channel_mix.0.", "channel_norm."),
    ("Mixer.channel_mix.1.net.", "channel_mlp."),
)
_GATING_KEYS = KeyMap(renames=_GATING)
_BLOCK_KEYS = KeyMap(
    renames=(
        *((f"mgu.{a}", f"gating.{b}") for a, b in _GATING),
        ("mgu.proj.", "gating.proj."),
        ("ffn.net.", "ffn."),
    )
)
_SIGNATURES = {
    "MixerGatingUnit": Signature(dim=int, seq_len=int, token_dim=int, channel_dim=int, dropout=float),
    "NiNBlock": Signature(d_model=int, d_ffn=int, seq_len=int, dropout=float),
}


def convert_ninformer_gating(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``MixerGatingUnit`` keys -> :class:`NiNformerGating` keys."""
    return _GATING_KEYS.to_attnzoo(state_dict)


def convert_ninformer_block(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``NiNBlock`` keys -> :class:`NiNformerBlock` keys."""
    return _BLOCK_KEYS.to_attnzoo(state_dict)


@adapter("ninformer_gating", _SIGNATURES)
def load_ninformer_gating(kw: dict[str, Any], symbol: str) -> Conversion:
    if symbol == "NiNBlock":
        module: torch.nn.Module = NiNformerBlock(
            kw["d_model"], kw["d_ffn"], kw["seq_len"], dropout=kw["dropout"]
        )
        keys = _BLOCK_KEYS
    else:
        module = NiNformerGating(
            kw["dim"], kw["seq_len"], kw["token_dim"], kw["channel_dim"], dropout=kw["dropout"]
        )
        keys = _GATING_KEYS
    return Conversion(module, lambda m, x: (m(x),), keys.to_attnzoo, keys.to_official)
