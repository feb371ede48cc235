"""Official gated attention-MIL formats (ACMIL repository).

* ``architecture/transformer.py::Attention_Gated(L=512, D=128, K=1)`` (default symbol):
  ``forward(x (N, L)) -> A (K, N)`` pre-softmax logits; keys ``attention_V.0.*``,
  ``attention_U.0.*``, ``attention_weights.*``.
* ``architecture/clam.py::Attn_Net_Gated(L=1024, D=256, dropout=False, n_classes=1)`` (CLAM's
  copy): ``forward(x) -> (A (N, K), x)``; keys ``attention_a.0.*``, ``attention_b.0.*``,
  ``attention_c.*``. Its dropout layers have no parameters and are inert in eval.

Both map onto :class:`attnzoo.mechanisms.pooling.attention_mil.AttentionMIL` with ``gated=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.pooling.attention_mil import AttentionMIL
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap

__all__ = ["convert_gated_attention_mil", "gated_attention_renames"]

_PREFIXES = {
    "Attention_Gated": ("attention_V.0.", "attention_U.0.", "attention_weights."),
    "Attn_Net_Gated": ("attention_a.0.", "attention_b.0.", "attention_c."),
}
_SIGNATURES = {
    "Attention_Gated": Signature(L=(int, 512), D=(int, 128), K=(int, 1)),
    "Attn_Net_Gated": Signature(L=(int, 1024), D=(int, 256), dropout=(bool, False), n_classes=(int, 1)),
}


def gated_attention_renames(symbol: str = "Attention_Gated", prefix: str = "") -> list[tuple[str, str]]:
    """``(official prefix, attnzoo prefix)`` pairs of official ``symbol``'s keys under ``prefix``."""
    if symbol not in _PREFIXES:
        raise ValueError(f"symbol must be one of {sorted(_PREFIXES)}, got {symbol!r}")
    ours = ("attention.proj_v.", "attention.proj_u.", "attention.score.")
    return [(prefix + theirs, mine) for theirs, mine in zip(_PREFIXES[symbol], ours)]


def convert_gated_attention_mil(
    state_dict: Mapping[str, torch.Tensor], symbol: str = "Attention_Gated"
) -> dict[str, torch.Tensor]:
    """Official ``symbol`` keys -> :class:`AttentionMIL` keys."""
    return KeyMap(renames=gated_attention_renames(symbol)).to_attnzoo(state_dict)


def _call_gated(m: AttentionMIL, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (m.logits(x[None])[0],)


def _call_clam(m: AttentionMIL, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (m.logits(x[None])[0].T, x)


@adapter("gated_attention_mil", _SIGNATURES)
def load_gated_attention_mil(kw: dict[str, Any], symbol: str) -> Conversion:
    branches = kw["K"] if symbol == "Attention_Gated" else kw["n_classes"]
    keys = KeyMap(renames=gated_attention_renames(symbol))
    call = _call_gated if symbol == "Attention_Gated" else _call_clam
    return Conversion(
        AttentionMIL(kw["L"], kw["D"], branches, gated=True), call, keys.to_attnzoo, keys.to_official
    )
