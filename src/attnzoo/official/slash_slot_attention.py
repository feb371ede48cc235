"""Official SLASH format: ``model.py::SlotAttention(cfg, eps=1e-8)`` of object-understanding/SLASH.

``cfg`` is the repository's nested config (``MODEL.HID_DIM``, ``MODEL.MLP_HID_DIM``,
``MODEL.SLOT.{NUM, DIM, ITERATIONS, ATTN_HEADS, ATTN_SMOOTH, ATTN_SMOOTH_SIZE, TEMPERATURE}``,
``WEAK_SUP.TYPE``, ``POS_PRED.{USE_POS_PRED, PP_SIZE}``). The official forward draws the initial
slots itself; the fixtures record the standard-normal draw as ``noise``, and the adapter turns it
into slots with :meth:`SlotAttention.initial_slots`. Outputs follow the official dict:
``attn``, ``attns.<t>``, ``attns_origin.<t>``, ``pos_pred.<t>``, ``slots`` (in the order asked).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from attnzoo.mechanisms.cross_attention.slot_attention import SlotAttention, SlotAttentionOutput
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_slash_slot_attention"]

_OUTPUTS_WITH_POS = ("attn", "attns", "attns_origin", "pos_pred", "slots")


def convert_slash_slot_attention(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``SlotAttention`` keys -> :class:`SlotAttention` keys."""
    renames = {
        "pos_predictor.layer_norm.": "pos_norm.",
        "pos_predictor.mlp.": "pos_mlp.",
        "pos_encoder.encoder.": "pos_encoder.",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in ("slots_mu", "slots_sigma"):
            out[key] = value.reshape(-1)
        elif key == "knconv.weight":
            out["ark_weight"] = value.reshape(value.shape[-2], value.shape[-1])
        else:
            prefix = next((p for p in renames if key.startswith(p)), None)
            out[key if prefix is None else renames[prefix] + key[len(prefix) :]] = value
    return out


def _output_names(iterations: int, with_pos: bool) -> list[str]:
    names = ["attn"]
    names += [f"attns.{t}" for t in range(iterations)] + [f"attns_origin.{t}" for t in range(iterations)]
    if with_pos:
        names += [f"pos_pred.{t}" for t in range(iterations)]
    return [*names, "slots"]


def _select(result: SlotAttentionOutput, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    table: dict[str, torch.Tensor] = {"attn": result.attn, "slots": result.slots}
    for t, a in enumerate(result.attns):
        table[f"attns.{t}"] = a
    for t, a in enumerate(result.attns_origin):
        table[f"attns_origin.{t}"] = a
    for t, p in enumerate(result.positions):
        table[f"pos_pred.{t}"] = p
    return tuple(table[n] for n in names)


@adapter("slash_slot_attention")
def load_slash_slot_attention(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if symbol not in (None, "SlotAttention"):
        raise ValueError(f"the slash_slot_attention format covers SlotAttention only, got {symbol!r}")
    cfg = constructor["cfg"]
    model, slot = cfg["MODEL"], cfg["MODEL"]["SLOT"]
    if cfg.get("WEAK_SUP", {}).get("INIT_USING_SUP", False):
        raise ValueError("WEAK_SUP.INIT_USING_SUP (slot initialisation from positions) is not supported")
    smooth = slot.get("ATTN_SMOOTH", "") or "none"
    if smooth not in ("none", "conv", "wnconv"):
        raise ValueError(f"ATTN_SMOOTH={smooth!r} is not supported (only '', 'conv', 'wnconv')")
    pos_pred = bool(cfg.get("POS_PRED", {}).get("USE_POS_PRED", False))
    module = SlotAttention(
        int(slot["DIM"]),
        int(model["HID_DIM"]),
        int(slot["ATTN_HEADS"]),
        num_iterations=int(slot["ITERATIONS"]),
        mlp_hidden_dim=int(model["MLP_HID_DIM"]),
        temperature=float(slot["TEMPERATURE"]),
        eps=float(constructor.get("eps", 1e-8)),
        smoothing=smooth,
        smoothing_size=int(slot.get("ATTN_SMOOTH_SIZE", 5)),
        position_dims=(4 if cfg["WEAK_SUP"]["TYPE"] == "bbox" else 2) if pos_pred else None,
        position_mlp=cfg.get("POS_PRED", {}).get("PP_SIZE", "base"),
        official_ark_iterates=smooth == "wnconv",
    )
    converted = convert_slash_slot_attention(state_dict)
    load_converted(module.to(converted["slots_mu"].dtype), converted)
    names = _output_names(module.num_iterations, pos_pred)

    def call(
        m: SlotAttention,
        inputs: torch.Tensor,
        noise: torch.Tensor,
        train: bool = False,
        num_slots: int | None = None,
    ) -> tuple[torch.Tensor, ...]:
        if train:
            raise ValueError("only the evaluation forward (train=False) is supported")
        if num_slots is not None and num_slots != noise.shape[1]:
            raise ValueError(f"num_slots={num_slots} disagrees with noise of {noise.shape[1]} slots")
        size = None
        if m.context_spatial_dims:
            side = math.isqrt(inputs.shape[1])
            size = (side, side)
        return _select(m.forward_details(m.initial_slots(noise), inputs, size=size), names)

    return OfficialRun(module.eval(), call)
