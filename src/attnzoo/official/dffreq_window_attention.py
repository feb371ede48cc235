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
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap, singletons

__all__ = ["convert_dffreq_local_attention"]

_KEYS = KeyMap(renames=(("mlp.0.", "pixel_mlp."),), views={"temperature": singletons(1, 2)})


def convert_dffreq_local_attention(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``LocalAttention`` state_dict -> attnzoo ``DFFreqWindowAttention`` state_dict."""
    return _KEYS.to_attnzoo(state_dict)


def _call(m: DFFreqWindowAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    size = (x.shape[-2], x.shape[-1])
    return (bnc_to_bchw(m(bchw_to_bnc(x), size=size), size),)


LOCAL_ATTENTION = Signature(
    dim=int, num_heads=int, bias=bool, window_size=(int, 8), padding_mode=(str, "zeros")
)


@adapter("dffreq_window_attention", {"LocalAttention": LOCAL_ATTENTION})
def load_dffreq_local_attention(kw: dict[str, Any], symbol: str) -> Conversion:
    module = DFFreqWindowAttention(
        kw["dim"],
        kw["num_heads"],
        window_size=kw["window_size"],
        bias=kw["bias"],
        padding_mode=kw["padding_mode"],
    )
    return Conversion(module, _call, _KEYS.to_attnzoo, _KEYS.to_official)
