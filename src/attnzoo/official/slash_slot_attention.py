"""Official SLASH format: ``model.py::SlotAttention(cfg, eps=1e-8)`` of object-understanding/SLASH.

``cfg`` is the repository's nested config (``MODEL.HID_DIM``, ``MODEL.MLP_HID_DIM``,
``MODEL.SLOT.{NUM, DIM, ITERATIONS, ATTN_HEADS, ATTN_SMOOTH, ATTN_SMOOTH_SIZE, TEMPERATURE}``,
``WEAK_SUP.TYPE``, ``POS_PRED.{USE_POS_PRED, PP_SIZE}``); the other sections and fields of the
repository config are accepted and unused, except inside ``MODEL.SLOT``, which is checked whole.
The official forward draws the initial slots itself; the fixtures record the standard-normal draw
as ``noise``, and the adapter turns it into slots with :meth:`SlotAttention.initial_slots`.
Outputs follow the official dict: ``attn``, ``attns.<t>``, ``attns_origin.<t>``, ``pos_pred.<t>``,
``slots`` (in the order asked).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from attnzoo.mechanisms.cross_attention.slot_attention import SlotAttention, SlotAttentionOutput
from attnzoo.official import CheckpointError, Choice, Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap, singletons

__all__ = ["convert_slash_slot_attention"]

_KEYS = KeyMap(
    renames=(
        ("pos_predictor.layer_norm.", "pos_norm."),
        ("pos_predictor.mlp.", "pos_mlp."),
        ("pos_encoder.encoder.", "pos_encoder."),
        ("knconv.weight", "ark_weight"),
    ),
    views={"slots_mu": singletons(0, 1), "slots_sigma": singletons(0, 1), "ark_weight": singletons(0, 1)},
)
_SLOT = Signature(
    NUM=int,
    DIM=int,
    ITERATIONS=int,
    ATTN_HEADS=int,
    ATTN_SMOOTH=(Choice("", "conv", "wnconv"), ""),
    ATTN_SMOOTH_SIZE=(int, 5),
    ATTN_SMOOTH_GAU_MIN=(float, 0.1),
    ATTN_SMOOTH_GAU_MAX=(float, 2.0),
    TEMPERATURE=(float, 1.0),
)
SLOT_ATTENTION = Signature(
    cfg=Signature(
        open=True,
        MODEL=Signature(open=True, HID_DIM=int, MLP_HID_DIM=int, SLOT=_SLOT),
        WEAK_SUP=(
            Signature(
                open=True, TYPE=(Choice("", "bbox", "bbox_center"), ""), INIT_USING_SUP=(Choice(False), False)
            ),
            {},
        ),
        POS_PRED=(Signature(open=True, USE_POS_PRED=(bool, False), PP_SIZE=(str, "base")), {}),
    ),
    eps=(float, 1e-8),
)


def convert_slash_slot_attention(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``SlotAttention`` keys -> :class:`SlotAttention` keys."""
    return _KEYS.to_attnzoo(state_dict)


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


@adapter("slash_slot_attention", {"SlotAttention": SLOT_ATTENTION})
def load_slash_slot_attention(kw: dict[str, Any], symbol: str) -> Conversion:
    cfg = kw["cfg"]
    model, slot = cfg["MODEL"], cfg["MODEL"]["SLOT"]
    pos_pred, sup = cfg["POS_PRED"]["USE_POS_PRED"], cfg["WEAK_SUP"]["TYPE"]
    if pos_pred and not sup:
        raise CheckpointError.argument(
            "cfg.WEAK_SUP.TYPE", "POS_PRED.USE_POS_PRED needs WEAK_SUP.TYPE 'bbox' or 'bbox_center'"
        )
    smooth = slot["ATTN_SMOOTH"] or "none"
    module = SlotAttention(
        slot["DIM"],
        model["HID_DIM"],
        slot["ATTN_HEADS"],
        num_iterations=slot["ITERATIONS"],
        mlp_hidden_dim=model["MLP_HID_DIM"],
        temperature=slot["TEMPERATURE"],
        eps=kw["eps"],
        smoothing=smooth,
        smoothing_size=slot["ATTN_SMOOTH_SIZE"],
        position_dims=(4 if sup == "bbox" else 2) if pos_pred else None,
        position_mlp=cfg["POS_PRED"]["PP_SIZE"],
        official_ark_iterates=smooth == "wnconv",
    )
    names = _output_names(slot["ITERATIONS"], pos_pred)

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

    return Conversion(module, call, _KEYS.to_attnzoo, _KEYS.to_official)
