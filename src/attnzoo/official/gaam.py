"""Official GAAM format: ``gaussian_adaptive_attention/GaussianBlock.py`` of
gioannides/Gaussian-Adaptive-Attention, classes ``GaussianAdaptiveAttention(norm_axis, num_heads,
num_gaussians, padding_value, mean_offset_init=0, eps=1e-8)`` (one head) and
``MultiHeadGaussianAdaptiveAttention(norm_axis, num_heads, num_gaussians, padding_value=None,
eps=1e-8)``.

Keys: ``mean_offsets (G,)`` and ``c (G,)`` (one head), ``attention_heads.<h>.mean_offsets`` /
``attention_heads.<h>.c`` (multi-head); attnzoo stacks them into ``(h, G)``. The official forward
takes any tensor and a ``norm_axis``; the adapter moves ``norm_axis`` to the token axis of a
``(P, n, 1)`` view (GAAM has no channel-dependent parameter) and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.token_mixer.gaam import GaussianAdaptiveAttention
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_gaam"]

_SYMBOLS = ("GaussianAdaptiveAttention", "MultiHeadGaussianAdaptiveAttention")


def convert_gaam(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official single- or multi-head keys -> :class:`GaussianAdaptiveAttention` keys."""
    if "mean_offsets" in state_dict:
        return {"mean_offsets": state_dict["mean_offsets"][None], "c": state_dict["c"][None]}
    heads = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("attention_heads.")})
    if not heads or heads != list(range(len(heads))):
        raise ValueError(f"not a GAAM checkpoint: keys {sorted(state_dict)}")
    return {
        p: torch.stack([state_dict[f"attention_heads.{h}.{p}"] for h in heads]) for p in ("mean_offsets", "c")
    }


@adapter("gaam")
def load_gaam(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    symbol = symbol or ("GaussianAdaptiveAttention" if "mean_offsets" in state_dict else _SYMBOLS[1])
    if symbol not in _SYMBOLS:
        raise ValueError(f"the gaam format covers {_SYMBOLS}, got symbol {symbol!r}")
    converted = convert_gaam(state_dict)
    heads, gaussians = converted["c"].shape
    multi = symbol == _SYMBOLS[1]
    if multi and int(constructor.get("num_heads", heads)) != heads:
        raise ValueError(f"num_heads={constructor['num_heads']} disagrees with the checkpoint ({heads})")
    if int(constructor.get("num_gaussians", gaussians)) != gaussians:
        raise ValueError(f"num_gaussians={constructor['num_gaussians']} disagrees with the checkpoint")
    axis = int(constructor.get("norm_axis", -1))
    module = GaussianAdaptiveAttention(
        1,
        int(gaussians),
        num_heads=int(heads),
        axis="tokens",
        padding_value=constructor.get("padding_value"),
        eps=float(constructor.get("eps", 1e-8)),
        official_head_eps=multi,
    )
    load_converted(module.to(converted["c"].dtype), converted)

    def call(
        m: GaussianAdaptiveAttention, x: torch.Tensor, return_attention_details: bool = False
    ) -> tuple[torch.Tensor, ...]:
        if not -x.dim() <= axis < x.dim():
            raise ValueError(f"norm_axis {axis} is out of range for x of shape {tuple(x.shape)}")
        moved = x.movedim(axis, -1)
        flat = moved.reshape(-1, moved.shape[-1], 1)

        def back(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(moved.shape).movedim(-1, axis)

        out = back(m(flat))
        return (out, back(m.weights(flat))) if return_attention_details else (out,)

    return OfficialRun(module.eval(), call)
