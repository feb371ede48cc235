"""Official MSGA position attention: ``src/models/attention.py::PAM_Module(in_dim)``.

Keys ``query_conv.*``, ``key_conv.*`` (``in_dim // 8`` output channels), ``value_conv.*`` and
``gamma`` map one-to-one onto :class:`attnzoo.mechanisms.feature_map.danet_pam.PositionAttention`.
"""

from __future__ import annotations

from typing import Any

from attnzoo.mechanisms.feature_map.danet_pam import PositionAttention
from attnzoo.official import Conversion, Signature, adapter


@adapter("msga_pam", {"PAM_Module": Signature(in_dim=int)})
def load_msga_pam(kw: dict[str, Any], symbol: str) -> Conversion:
    return Conversion(PositionAttention(kw["in_dim"], reduction=8), lambda m, x: (m(x),))
