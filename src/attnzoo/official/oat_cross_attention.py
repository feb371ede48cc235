"""Official OAT format: ``src/model/models.py::Cross_Attention(emb_size, d_k)`` of
HKUST-NISL/oat_eccv24.

``forward(encoder_out (S, B, E), decoder_out (T, B, E)) -> (T, B, S + 1, 1)`` logits, sequence-first
(``d_k`` only sets the ``1 / sqrt(d_k)`` scale). Keys ``decode_fc.*`` and ``encode_fc.*`` are
attnzoo's keys as they are.
"""

from __future__ import annotations

from typing import Any

import torch

from attnzoo.mechanisms.cross_attention.oat_cross_attention import ObjectCrossAttention
from attnzoo.official import Conversion, Signature, adapter


def _call(
    m: ObjectCrossAttention, encoder_out: torch.Tensor, decoder_out: torch.Tensor
) -> tuple[torch.Tensor]:
    logits = m.logits(decoder_out.transpose(0, 1), encoder_out.transpose(0, 1))
    return (logits.transpose(0, 1).unsqueeze(-1),)


@adapter("oat_cross_attention", {"Cross_Attention": Signature(emb_size=int, d_k=int)})
def load_oat_cross_attention(kw: dict[str, Any], symbol: str) -> Conversion:
    return Conversion(ObjectCrossAttention(kw["emb_size"], d_k=kw["d_k"]), _call)
