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
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap, singletons, swap

__all__ = ["convert_gaam"]

_PARAMS = ("mean_offsets", "c")
_SINGLE = KeyMap(views={p: swap(singletons(0)) for p in _PARAMS})
_SIGNATURES = {
    "GaussianAdaptiveAttention": Signature(
        norm_axis=int,
        num_heads=int,
        num_gaussians=int,
        padding_value=float | None,
        mean_offset_init=(float, 0.0),
        eps=(float, 1e-8),
    ),
    "MultiHeadGaussianAdaptiveAttention": Signature(
        norm_axis=int, num_heads=int, num_gaussians=int, padding_value=(float | None, None), eps=(float, 1e-8)
    ),
}


def _from_heads(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    heads = len({k.split(".")[1] for k in state_dict if k.startswith("attention_heads.")})
    return {p: torch.stack([state_dict[f"attention_heads.{h}.{p}"] for h in range(heads)]) for p in _PARAMS}


def _to_heads(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        f"attention_heads.{h}.{p}": state_dict[p][h] for h in range(state_dict["c"].shape[0]) for p in _PARAMS
    }


def convert_gaam(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official single- or multi-head keys -> :class:`GaussianAdaptiveAttention` keys."""
    return _SINGLE.to_attnzoo(state_dict) if "c" in state_dict else _from_heads(state_dict)


@adapter("gaam", _SIGNATURES)
def load_gaam(kw: dict[str, Any], symbol: str) -> Conversion:
    multi = symbol == "MultiHeadGaussianAdaptiveAttention"
    axis = kw["norm_axis"]
    module = GaussianAdaptiveAttention(
        1,
        kw["num_gaussians"],
        num_heads=kw["num_heads"] if multi else 1,
        axis="tokens",
        padding_value=kw["padding_value"],
        eps=kw["eps"],
        mean_offset_init=kw.get("mean_offset_init", 0.0),
        official_head_eps=multi,
    )

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

    if multi:
        return Conversion(module, call, _from_heads, _to_heads)
    return Conversion(module, call, _SINGLE.to_attnzoo, _SINGLE.to_official)
