"""Official OverLoCK ContMix format: ``models/contmix.py::ContMixBlock`` of LMMMEng/OverLoCK.

``ContMixBlock(dim, kernel_size, smk_size, num_heads, mlp_ratio, res_scale, ls_init_value,
drop_path, use_gemm, deploy, use_checkpoint)``; ``forward(x (B, C, H, W)) -> (B, C, H, W)``.
Maps onto :class:`attnzoo.mechanisms.feature_map.contmix.ContMixBlock` (``deploy=True`` ->
``fused_lepe=True``); ``use_gemm`` and ``use_checkpoint`` change the implementation, not the function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.feature_map.contmix import DILATED_BRANCHES, ContMixBlock
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_contmix_block"]

_PREFIXES = (
    ("dwconv1.", "dwconv1."),
    ("norm1.", "norm1."),
    ("weight_query.0.", "mixer.query.0."),
    ("weight_query.1.", "mixer.query.1."),
    ("weight_key.1.", "mixer.key.0."),
    ("weight_key.2.", "mixer.key.1."),
    ("weight_value.0.", "mixer.value.0."),
    ("weight_value.1.", "mixer.value.1."),
    ("weight_proj.", "mixer.weight_proj."),
    ("fusion_proj.0.", "mixer.fusion.0."),
    ("fusion_proj.1.", "mixer.fusion.1."),
    ("lepe.0.lk_origin.", "mixer.lepe.conv."),
    ("lepe.0.origin_bn.", "mixer.lepe.bn."),
    ("lepe.1.", "mixer.lepe_bn."),
    ("se_layer.proj.1.", "mixer.se.0."),
    ("se_layer.proj.3.", "mixer.se.2."),
    ("gate.0.", "mixer.gate.0."),
    ("gate.1.", "mixer.gate.1."),
    ("proj.0.", "mixer.proj_bn."),
    ("proj.1.", "mixer.proj."),
    ("dwconv2.", "dwconv2."),
    ("norm2.", "norm2."),
    ("mlp.", "mlp."),
    ("ls1.", "ls1."),
    ("ls2.", "ls2."),
    ("rpb1", "mixer.rpb_small"),
    ("rpb2", "mixer.rpb_large"),
)


def convert_contmix_block(
    state_dict: Mapping[str, torch.Tensor], kernel_size: int
) -> dict[str, torch.Tensor]:
    """Official ``ContMixBlock`` keys -> :class:`ContMixBlock` keys (shapes adapted)."""
    prefixes = list(_PREFIXES)
    for i, (k, r) in enumerate(DILATED_BRANCHES[kernel_size]):
        prefixes.append((f"lepe.0.dil_conv_k{k}_{r}.", f"mixer.lepe.branches.{i}.0."))
        prefixes.append((f"lepe.0.dil_bn_k{k}_{r}.", f"mixer.lepe.branches.{i}.1."))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = next(((a, b) for a, b in prefixes if key.startswith(a)), None)
        if match is None:
            raise ValueError(f"unexpected key {key!r} in a ContMixBlock checkpoint")
        ours = match[1] + key[len(match[0]) :]
        if ours == "mixer.weight_proj.weight":
            value = value.reshape(value.shape[0], -1)
        elif ours.startswith(("ls1.weight", "ls2.weight", "mlp.3.")):
            value = value.flatten()
        out[ours] = value
    return out


@adapter("overlock_contmix")
def load_contmix(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if symbol not in (None, "ContMixBlock"):
        raise ValueError(f"overlock_contmix covers ContMixBlock only, got symbol {symbol!r}")
    dim = int(constructor.get("dim", 64))
    kernel_size = int(constructor.get("kernel_size", 7))
    module = ContMixBlock(
        dim,
        kernel_size,
        int(constructor.get("smk_size", 5)),
        int(constructor.get("num_heads", 2)),
        float(constructor.get("mlp_ratio", 4)),
        res_scale=bool(constructor.get("res_scale", False)),
        ls_init_value=constructor.get("ls_init_value"),
        drop_path=float(constructor.get("drop_path", 0.0)),
        fused_lepe=bool(constructor.get("deploy", False)),
    )
    dtype = state_dict["dwconv1.weight"].dtype
    load_converted(module.to(dtype), convert_contmix_block(state_dict, kernel_size))
    return OfficialRun(module.eval(), lambda m, x: (m(x),))
