"""Official gated attention-MIL formats (ACMIL repository, ``architecture/transformer.py``).

* ``Attention_Gated(L, D, K)`` (default symbol): ``forward(x (N, L)) -> A (K, N)`` pre-softmax
  logits; keys ``attention_V.0.*``, ``attention_U.0.*``, ``attention_weights.*``.
* ``Attn_Net_Gated`` (CLAM's copy, ``architecture/clam.py``; ``L, D, n_classes`` and
  ``dropout``): ``forward(x) -> (A (N, K), x)``; keys ``attention_a.0.*``, ``attention_b.0.*``,
  ``attention_c.*``. Its dropout layers are inert in eval.

Both map onto :class:`attnzoo.mechanisms.pooling.attention_mil.AttentionMIL` with ``gated=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.pooling.attention_mil import AttentionMIL
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_gated_attention_mil"]

_KEYS = {
    "Attention_Gated": ("attention_V.0", "attention_U.0", "attention_weights"),
    "Attn_Net_Gated": ("attention_a.0", "attention_b.0", "attention_c"),
}


def convert_gated_attention_mil(
    state_dict: Mapping[str, torch.Tensor], symbol: str = "Attention_Gated", prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Official keys (under ``prefix``) -> :class:`AttentionMIL` keys."""
    if symbol not in _KEYS:
        raise ValueError(f"symbol must be one of {sorted(_KEYS)}, got {symbol!r}")
    v, u, w = _KEYS[symbol]
    out = {}
    for official, ours in ((v, "proj_v"), (u, "proj_u"), (w, "score")):
        for p in ("weight", "bias"):
            out[f"attention.{ours}.{p}"] = state_dict[f"{prefix}{official}.{p}"]
    return out


@adapter("gated_attention_mil")
def load_gated_attention_mil(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    symbol = symbol or "Attention_Gated"
    converted = convert_gated_attention_mil(state_dict, symbol)
    d, length = converted["attention.proj_v.weight"].shape
    k = int(converted["attention.score.weight"].shape[0])
    for key, want in (("L", length), ("D", d), ("K", k), ("n_classes", k)):
        if key in constructor and int(constructor[key]) != want:
            raise ValueError(f"constructor {key}={constructor[key]} disagrees with the checkpoint ({want})")
    module = AttentionMIL(int(length), int(d), k, gated=True)
    load_converted(module.to(converted["attention.proj_v.weight"].dtype), converted)

    def call_gated(m: AttentionMIL, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (m.logits(x[None])[0],)

    def call_clam(m: AttentionMIL, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (m.logits(x[None])[0].T, x)

    return OfficialRun(module.eval(), call_gated if symbol == "Attention_Gated" else call_clam)
