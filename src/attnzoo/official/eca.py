"""Official ECA-Net format: ``models/eca_module.py::eca_layer(channel, k_size)``.

The only parameter is ``conv.weight (1, 1, k)``; the same key as attnzoo and timm. ``k`` is read
from the checkpoint, never derived from ``channel`` (the official code ignores ``channel``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.feature_map.eca import EfficientChannelAttention
from attnzoo.official import OfficialRun, adapter, load_converted


@adapter("eca")
def load_eca(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    weight = state_dict["conv.weight"]
    k = int(weight.shape[-1])
    if "k_size" in constructor and int(constructor["k_size"]) != k:
        raise ValueError(f"k_size={constructor['k_size']} disagrees with conv.weight of width {k}")
    module = EfficientChannelAttention(int(constructor["channel"]), k)
    load_converted(module.to(weight.dtype), {"conv.weight": weight})
    return OfficialRun(module.eval(), lambda m, x: (m(x),))
