"""Official MSGA position attention: ``src/models/attention.py::PAM_Module(in_dim)``.

Keys ``query_conv.*``, ``key_conv.*``, ``value_conv.*``, ``gamma`` map one-to-one onto
:class:`attnzoo.mechanisms.feature_map.danet_pam.PositionAttention`; the query/key width
``in_dim // 8`` is checked against the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.feature_map.danet_pam import PositionAttention
from attnzoo.official import OfficialRun, adapter, load_converted

_KEYS = ("query_conv.weight", "query_conv.bias", "key_conv.weight", "key_conv.bias",
         "value_conv.weight", "value_conv.bias", "gamma")


def convert_pam_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``PAM_Module`` state_dict -> attnzoo ``PositionAttention`` state_dict."""
    missing = [k for k in _KEYS if k not in state_dict]
    if missing:
        raise ValueError(f"not a PAM_Module checkpoint: missing {missing}")
    return {k: state_dict[k] for k in _KEYS}


@adapter("msga_pam")
def load_msga_pam(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if symbol not in (None, "PAM_Module"):
        raise ValueError(f"msga_pam converts PAM_Module, got symbol {symbol!r}")
    converted = convert_pam_state_dict(state_dict)
    channels = int(constructor["in_dim"])
    width = int(converted["query_conv.weight"].shape[0])
    if width != channels // 8:
        raise ValueError(f"query_conv has {width} output channels, expected in_dim // 8 = {channels // 8}")
    module = PositionAttention(channels, reduction=8)
    load_converted(module.to(converted["gamma"].dtype), converted)
    return OfficialRun(module.eval(), lambda m, x: (m(x),))
