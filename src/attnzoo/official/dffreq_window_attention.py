"""Official DFFreq format: ``networks/FreqLC.py::LocalAttention``.

Constructor ``LocalAttention(dim, num_heads, bias, window_size=8, padding_mode='zeros')``; input
and output ``(B, C, H, W)``. :func:`convert_dffreq_local_attention` maps the checkpoint to
:class:`attnzoo.mechanisms.token_mixer.dffreq_window_attention.DFFreqWindowAttention`
(``mlp.0`` -> ``pixel_mlp``, ``temperature (h, 1, 1)`` -> ``(h,)``; conv keys unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.layout import bchw_to_bnc, bnc_to_bchw
from attnzoo.mechanisms.token_mixer.dffreq_window_attention import DFFreqWindowAttention
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_dffreq_local_attention"]


def convert_dffreq_local_attention(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``LocalAttention`` state_dict -> attnzoo ``DFFreqWindowAttention`` state_dict."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("mlp.0."):
            key = "pixel_mlp." + key[len("mlp.0.") :]
        elif key == "temperature":
            value = value.reshape(-1)
        out[key] = value
    return out


@adapter("dffreq_window_attention")
def load_dffreq_local_attention(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    module = DFFreqWindowAttention(
        int(constructor["dim"]),
        int(constructor["num_heads"]),
        window_size=int(constructor.get("window_size", 8)),
        bias=bool(constructor["bias"]),
        padding_mode=str(constructor.get("padding_mode", "zeros")),
    )
    dtype = state_dict["project_out.weight"].dtype
    load_converted(module.to(dtype), convert_dffreq_local_attention(state_dict))

    def call(m: DFFreqWindowAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = (x.shape[-2], x.shape[-1])
        return (bnc_to_bchw(m(bchw_to_bnc(x), size=size), size),)

    return OfficialRun(module.eval(), call)
