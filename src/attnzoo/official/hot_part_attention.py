"""Official HOT format: ``hot/models/models.py::PartSegm(nChannels, num_class, use_conv,
use_contrastive)`` of yixchen/HOT.

``forward(x, x_part)`` returns ``(contact logits (B, K, H, W), part logits (B, K, H, W), x_feat)``
with ``x_feat (B, K, C // 8)`` only when ``use_contrastive`` (else ``None``, omitted here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.gate.hot_part_attention import HOTPartAttention
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_hot_part_attention"]

_BN = ("weight", "bias", "running_mean", "running_var")


def convert_hot_part_attention(
    state_dict: Mapping[str, torch.Tensor], num_parts: int
) -> dict[str, torch.Tensor]:
    """Official ``PartSegm`` keys -> :class:`HOTPartAttention` keys (drops conv1x1 and SyncBN extras)."""
    used = {"cbr_part.0.weight", "conv_last_part.weight", "conv_last_part.bias", "conv_last_cont.weight"}
    used |= {"conv_last_cont.bias"} | {f"cbr_part.1.{n}" for n in (*_BN, "num_batches_tracked")}
    used |= {f"cbr.{k}.{n}" for k in range(num_parts) for n in ("0.weight", *(f"1.{b}" for b in _BN))}
    used |= {f"cbr.{k}.1.num_batches_tracked" for k in range(num_parts)}
    unknown = [
        key
        for key in state_dict
        if key not in used
        and not key.startswith("conv1x1.")
        and not key.endswith(("._tmp_running_mean", "._tmp_running_var", "._running_iter"))
    ]
    if unknown:
        raise ValueError(f"unexpected keys in a PartSegm checkpoint: {unknown}")
    out = {
        "part_conv.weight": state_dict["cbr_part.0.weight"],
        "part_head.weight": state_dict["conv_last_part.weight"],
        "part_head.bias": state_dict["conv_last_part.bias"],
        "branch_conv.weight": torch.cat([state_dict[f"cbr.{k}.0.weight"] for k in range(num_parts)]),
        "fuse.weight": state_dict["conv_last_cont.weight"],
        "fuse.bias": state_dict["conv_last_cont.bias"],
    }
    for name in _BN:
        out[f"part_bn.{name}"] = state_dict[f"cbr_part.1.{name}"]
        out[f"branch_bn.{name}"] = torch.cat([state_dict[f"cbr.{k}.1.{name}"] for k in range(num_parts)])
    if "cbr_part.1.num_batches_tracked" in state_dict:
        out["part_bn.num_batches_tracked"] = state_dict["cbr_part.1.num_batches_tracked"]
        out["branch_bn.num_batches_tracked"] = state_dict["cbr.0.1.num_batches_tracked"]
    return out


@adapter("hot_part_attention")
def load_hot_part_attention(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if symbol not in (None, "PartSegm"):
        raise ValueError(f"hot_part_attention covers PartSegm only, got symbol {symbol!r}")
    channels = int(constructor["nChannels"])
    num_parts = int(constructor.get("num_class", 1))
    contrastive = bool(constructor.get("use_contrastive", False))
    module = HOTPartAttention(channels, num_parts, out_channels=num_parts)
    weight = state_dict["cbr_part.0.weight"]
    load_converted(module.to(weight.dtype), convert_hot_part_attention(state_dict, num_parts))

    def call(m: HOTPartAttention, x: torch.Tensor, x_part: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = m.parts(x, x_part)
        if contrastive:
            return out.out, out.part_logits, out.part_features
        return out.out, out.part_logits

    return OfficialRun(module.eval(), call)
