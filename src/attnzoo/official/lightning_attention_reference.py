"""Official Lightning Attention torch reference: ``lightning_attn/ops/torch/linear_attention.py::
linear_attn(q, k, v, s=None)``.

A pure function (no parameters): ``q, k: (b, h, n, d)``, ``v: (b, h, n, e)``, ``s: (h, 1, 1)``
per-head decay slopes or absent. The fixture's forward kwarg ``slopes`` only describes how ``s``
was built and is accepted and ignored. Checkpoints of the TnlAttention layer need no conversion
(see :class:`attnzoo.mechanisms.token_mixer.lightning_attention.LightningAttention`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.token_mixer.lightning_attention import LightningAttentionOp
from attnzoo.official import OfficialRun, adapter


def _call(
    module: LightningAttentionOp,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor | None = None,
    slopes: str | None = None,
) -> tuple[torch.Tensor]:
    return (module(q, k, v, s),)


@adapter("lightning_attention_reference")
def load_lightning_attention_reference(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if constructor:
        raise ValueError(f"linear_attn takes no constructor arguments, got {dict(constructor)}")
    if state_dict:
        raise ValueError(f"linear_attn has no parameters, got keys {sorted(state_dict)}")
    return OfficialRun(LightningAttentionOp(), _call)
