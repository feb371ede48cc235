"""Official MSGA channel attention: ``src/models/attention.py::CAM_Module(in_dim)``.

The only parameter is ``gamma`` (same key in attnzoo); the official ``softmax(max(E) - E)`` is
attnzoo's ``energy_sign=-1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.feature_map.danet_cam import ChannelSelfAttention
from attnzoo.official import OfficialRun, adapter, load_converted


def convert_cam_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``CAM_Module`` state_dict -> attnzoo ``ChannelSelfAttention`` state_dict."""
    if "gamma" not in state_dict:
        raise ValueError("not a CAM_Module checkpoint: missing 'gamma'")
    return {"gamma": state_dict["gamma"]}


@adapter("msga_cam")
def load_msga_cam(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if symbol not in (None, "CAM_Module"):
        raise ValueError(f"msga_cam converts CAM_Module, got symbol {symbol!r}")
    converted = convert_cam_state_dict(state_dict)
    module = ChannelSelfAttention(int(constructor["in_dim"]), energy_sign=-1.0)
    load_converted(module.to(converted["gamma"].dtype), converted)
    return OfficialRun(module.eval(), lambda m, x: (m(x),))
