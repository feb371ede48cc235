"""Official OAT format: ``src/model/models.py::Cross_Attention(emb_size, d_k)`` of
HKUST-NISL/oat_eccv24.

``forward(encoder_out (S, B, E), decoder_out (T, B, E)) -> (T, B, S + 1, 1)`` logits, sequence-first.
Keys ``decode_fc.*`` and ``encode_fc.*`` are attnzoo's keys as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.cross_attention.oat_cross_attention import ObjectCrossAttention
from attnzoo.official import OfficialRun, adapter, load_converted


@adapter("oat_cross_attention")
def load_oat_cross_attention(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if symbol not in (None, "Cross_Attention"):
        raise ValueError(f"the oat_cross_attention format covers Cross_Attention only, got {symbol!r}")
    weight = state_dict["decode_fc.weight"]
    emb = int(weight.shape[0])
    if int(constructor.get("emb_size", emb)) != emb:
        raise ValueError(f"emb_size={constructor['emb_size']} disagrees with the checkpoint ({emb})")
    if "d_k" not in constructor:
        raise ValueError("the official constructor needs d_k (it sets the 1/sqrt(d_k) scale)")
    module = ObjectCrossAttention(emb, d_k=int(constructor["d_k"]))
    load_converted(module.to(weight.dtype), {k: state_dict[k] for k in module.state_dict()})

    def call(
        m: ObjectCrossAttention, encoder_out: torch.Tensor, decoder_out: torch.Tensor
    ) -> tuple[torch.Tensor]:
        logits = m.logits(decoder_out.transpose(0, 1), encoder_out.transpose(0, 1))
        return (logits.transpose(0, 1).unsqueeze(-1),)

    return OfficialRun(module.eval(), call)
