"""Official ACT format: ``models/llama_modelling_aug.py::atten_process_eval`` (GATECH-EIC/ACT).

A pure function of the attention map (no parameters): the official module globals ``BETA`` /
``THRES`` are the constructor's ``beta`` / ``threshold``, and the per-layer head table entry is the
forward kwarg ``heads`` (``layer`` only names the table row it came from). The official function
has the one-token decode quirk, so the adapter builds :class:`ACTCalibration` with
``official_quirks=True``; attnzoo's default (``False``) fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from attnzoo.inference.act import ACTCalibration
from attnzoo.official import Conversion, Signature, adapter


def _call(
    module: ACTCalibration, attn_weights: torch.Tensor, heads: Sequence[int], layer: int | None = None
) -> tuple[torch.Tensor]:
    return (module(attn_weights, heads),)


@adapter("act_calibration", {"atten_process_eval": Signature(beta=(float, 0.4), threshold=(float, 0.1))})
def load_act_calibration(kw: dict[str, Any], symbol: str) -> Conversion:
    return Conversion(ACTCalibration(kw["beta"], kw["threshold"], official_quirks=True), _call)
