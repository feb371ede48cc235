"""Official ECA-Net format: ``models/eca_module.py::eca_layer(channel, k_size=3)``.

The only parameter is ``conv.weight (1, 1, k_size)``; the same key as attnzoo and timm. The
official code never uses ``channel`` (the kernel width is ``k_size``, not derived from it).
"""

from __future__ import annotations

from typing import Any

from attnzoo.mechanisms.feature_map.eca import EfficientChannelAttention
from attnzoo.official import Conversion, Signature, adapter


@adapter("eca", {"eca_layer": Signature(channel=int, k_size=(int, 3))})
def load_eca(kw: dict[str, Any], symbol: str) -> Conversion:
    return Conversion(EfficientChannelAttention(kw["channel"], kw["k_size"]), lambda m, x: (m(x),))
