"""Official Lightning Attention torch reference: ``lightning_attn/ops/torch/linear_attention.py::
linear_attn(q, k, v, s=None)``.

A pure function (no parameters): ``q, k: (b, h, n, d)``, ``v: (b, h, n, e)``, ``s: (h, 1, 1)``
per-head decay slopes or absent. The fixture's forward kwarg ``slopes`` only describes how ``s``
was built and is accepted and ignored. Checkpoints of the TnlAttention layer need no conversion
(see :class:`attnzoo.mechanisms.token_mixer.lightning_attention.LightningAttention`).
"""

from __future__ import annotations

from typing import Any

import torch

from attnzoo.mechanisms.token_mixer.lightning_attention import LightningAttentionOp
from attnzoo.official import Conversion, Signature, adapter


def _call(
    module: LightningAttentionOp,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor | None = None,
    slopes: str | None = None,
) -> tuple[torch.Tensor]:
    return (module(q, k, v, s),)


@adapter("lightning_attention_reference", {"linear_attn": Signature()})
def load_lightning_attention_reference(kw: dict[str, Any], symbol: str) -> Conversion:
    return Conversion(LightningAttentionOp(), _call)
