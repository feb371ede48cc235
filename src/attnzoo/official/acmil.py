"""Official ACMIL format: ``architecture/transformer.py::ACMIL_GA(conf, D, droprate, n_token,
n_masked_patch, mask_drop)`` of dazhangyu123/ACMIL.

``forward(x (1, N, D_feat))`` returns ``(branch logits (K, n_class), slide logits (1, n_class),
A (1, K, N))`` with ``A`` the pre-softmax attention logits (STKIM-dropped entries = -1e9).
Keys: ``dimreduction.fc1.weight``, ``attention.attention_{V,U}.0.*``,
``attention.attention_weights.*``, ``classifier.<k>.fc.*``, ``Slide_classifier.fc.*``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.pooling.acmil import ACMIL
from attnzoo.official import OfficialRun, adapter, load_converted
from attnzoo.official.gated_attention_mil import convert_gated_attention_mil

__all__ = ["convert_acmil"]


def convert_acmil(state_dict: Mapping[str, torch.Tensor], branches: int) -> dict[str, torch.Tensor]:
    """Official ``ACMIL_GA`` keys -> :class:`ACMIL` keys."""
    out = {"embed.weight": state_dict["dimreduction.fc1.weight"]}
    out.update(convert_gated_attention_mil(state_dict, "Attention_Gated", prefix="attention."))
    for k in range(branches):
        for p in ("weight", "bias"):
            out[f"branch_heads.{k}.{p}"] = state_dict[f"classifier.{k}.fc.{p}"]
    for p in ("weight", "bias"):
        out[f"bag_head.{p}"] = state_dict[f"Slide_classifier.fc.{p}"]
    return out


@adapter("acmil")
def load_acmil(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if symbol not in (None, "ACMIL_GA"):
        raise ValueError(f"the acmil format covers ACMIL_GA only, got symbol {symbol!r}")
    conf = dict(constructor.get("conf", {}))
    branches = int(constructor.get("n_token", 1))
    hidden, dim = state_dict["dimreduction.fc1.weight"].shape
    attn_dim = int(state_dict["attention.attention_V.0.weight"].shape[0])
    num_classes = int(state_dict["Slide_classifier.fc.weight"].shape[0])
    for key, want in (("D_feat", dim), ("D_inner", hidden), ("n_class", num_classes)):
        if key in conf and int(conf[key]) != want:
            raise ValueError(f"conf.{key}={conf[key]} disagrees with the checkpoint ({want})")
    if "D" in constructor and int(constructor["D"]) != attn_dim:
        raise ValueError(f"D={constructor['D']} disagrees with the checkpoint ({attn_dim})")
    module = ACMIL(
        int(dim),
        int(hidden),
        attn_dim,
        branches,
        n_masked=int(constructor.get("n_masked_patch", 0)),
        mask_drop=float(constructor.get("mask_drop", 0.0)),
        num_classes=num_classes,
        dropout=float(constructor.get("droprate", 0.0)),
    )
    weight = state_dict["dimreduction.fc1.weight"]
    load_converted(module.to(weight.dtype), convert_acmil(state_dict, branches))

    def call(m: ACMIL, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dim() != 3 or x.shape[0] != 1:
            raise ValueError(f"the official ACMIL_GA takes x of shape (1, N, D_feat), got {tuple(x.shape)}")
        out = m.classify(x)
        logits = out.attention_logits.masked_fill(torch.isneginf(out.attention_logits), -1e9)
        return out.branch_logits[0], out.bag_logits, logits

    return OfficialRun(module.eval(), call)
