"""Official MSGA channel attention: ``src/models/attention.py::CAM_Module(in_dim)``.

The only parameter is ``gamma (1,)`` (same key in attnzoo); the official ``softmax(max(E) - E)`` is
attnzoo's ``energy_sign=-1``.
"""

from __future__ import annotations

from typing import Any

from attnzoo.mechanisms.feature_map.danet_cam import ChannelSelfAttention
from attnzoo.official import Conversion, Signature, adapter


@adapter("msga_cam", {"CAM_Module": Signature(in_dim=int)})
def load_msga_cam(kw: dict[str, Any], symbol: str) -> Conversion:
    return Conversion(ChannelSelfAttention(kw["in_dim"], energy_sign=-1.0), lambda m, x: (m(x),))
