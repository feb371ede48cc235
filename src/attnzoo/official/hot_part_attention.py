"""Official HOT format: ``hot/models/models.py::PartSegm(nChannels, num_class=1, use_conv=False,
use_contrastive=False)`` of yixchen/HOT.

``forward(x, x_part)`` returns ``(contact logits (B, K, H, W), part logits (B, K, H, W), x_feat)``
with ``x_feat (B, K, C // 8)`` only when ``use_contrastive`` (else ``None``, omitted here).
The ``K`` branch convolutions ``cbr.<k>`` are stacked into one; ``conv1x1`` (``use_conv=True``) is
never used by the official forward and is dropped. The official BatchNorm is
``SynchronizedBatchNorm2d``: its extra buffers ``_tmp_running_mean``, ``_tmp_running_var`` and
``_running_iter`` may be present and are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.gate.hot_part_attention import HOTPartAttention
from attnzoo.official import Conversion, Signature, adapter

__all__ = ["convert_hot_part_attention"]

_BN = ("weight", "bias", "running_mean", "running_var")
_RENAMES = {
    "cbr_part.0.": "part_conv.",
    "cbr_part.1.": "part_bn.",
    "conv_last_part.": "part_head.",
    "conv_last_cont.": "fuse.",
}
_KEPT = {f"{p}{n}" for p in ("part_conv.", "part_head.", "fuse.") for n in ("weight", "bias")}
_KEPT |= {f"part_bn.{n}" for n in (*_BN, "num_batches_tracked")}


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    prefix = next((p for p in table if key.startswith(p)), None)
    return None if prefix is None else table[prefix] + key[len(prefix) :]


def convert_hot_part_attention(
    state_dict: Mapping[str, torch.Tensor], num_parts: int
) -> dict[str, torch.Tensor]:
    """Official ``PartSegm`` keys -> :class:`HOTPartAttention` keys (drops conv1x1 and SyncBN extras)."""
    out = {}
    for key, value in state_dict.items():
        ours = _rename(key, _RENAMES)
        if ours in _KEPT:
            out[ours] = value
    out["branch_conv.weight"] = torch.cat([state_dict[f"cbr.{k}.0.weight"] for k in range(num_parts)])
    for name in _BN:
        out[f"branch_bn.{name}"] = torch.cat([state_dict[f"cbr.{k}.1.{name}"] for k in range(num_parts)])
    if "cbr.0.1.num_batches_tracked" in state_dict:
        out["branch_bn.num_batches_tracked"] = state_dict["cbr.0.1.num_batches_tracked"]
    return out


def _to_official(
    state_dict: Mapping[str, torch.Tensor], num_parts: int, use_conv: bool
) -> dict[str, torch.Tensor]:
    back = {v: k for k, v in _RENAMES.items()}
    out = {_rename(k, back): v for k, v in state_dict.items() if not k.startswith("branch_")}
    for k in range(num_parts):
        out[f"cbr.{k}.0.weight"] = state_dict["branch_conv.weight"].chunk(num_parts)[k]
        for name in _BN:
            out[f"cbr.{k}.1.{name}"] = state_dict[f"branch_bn.{name}"].chunk(num_parts)[k]
        out[f"cbr.{k}.1.num_batches_tracked"] = state_dict["branch_bn.num_batches_tracked"]
    if use_conv:
        channels = state_dict["part_conv.weight"].shape[0]
        like = state_dict["part_conv.weight"]
        out["conv1x1.weight"], out["conv1x1.bias"] = like.new_zeros(1, channels, 1, 1), like.new_zeros(1)
    return out


def _sync_bn_extras(channels: int, num_parts: int) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, width in (
        ("cbr_part.1.", channels),
        *((f"cbr.{k}.1.", channels // 8) for k in range(num_parts)),
    ):
        out[f"{prefix}_tmp_running_mean"] = torch.zeros(width)
        out[f"{prefix}_tmp_running_var"] = torch.ones(width)
        out[f"{prefix}_running_iter"] = torch.ones(1)
    return out


PART_SEGM = Signature(
    nChannels=int, num_class=(int, 1), use_conv=(bool, False), use_contrastive=(bool, False)
)


@adapter("hot_part_attention", {"PartSegm": PART_SEGM})
def load_hot_part_attention(kw: dict[str, Any], symbol: str) -> Conversion:
    channels, parts, contrastive = kw["nChannels"], kw["num_class"], kw["use_contrastive"]
    module = HOTPartAttention(channels, parts, out_channels=parts)

    def call(m: HOTPartAttention, x: torch.Tensor, x_part: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = m.parts(x, x_part)
        if contrastive:
            return out.out, out.part_logits, out.part_features
        return out.out, out.part_logits

    return Conversion(
        module,
        call,
        lambda sd: convert_hot_part_attention(sd, parts),
        lambda sd: _to_official(sd, parts, kw["use_conv"]),
        optional=_sync_bn_extras(channels, parts),
    )
