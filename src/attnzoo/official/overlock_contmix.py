"""Official OverLoCK ContMix format: ``models/contmix.py::ContMixBlock`` of LMMMEng/OverLoCK.

``ContMixBlock(dim, kernel_size, smk_size, num_heads, mlp_ratio, res_scale, ls_init_value,
drop_path, use_gemm, deploy, use_checkpoint)``; ``forward(x (B, C, H, W)) -> (B, C, H, W)``.
Maps onto :class:`attnzoo.mechanisms.feature_map.contmix.ContMixBlock` (``deploy=True`` ->
``fused_lepe=True``); ``use_gemm`` and ``use_checkpoint`` change the implementation, not the function;
only the default ``norm_layer`` (LayerNorm2d) is supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.feature_map.contmix import DILATED_BRANCHES, ContMixBlock
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap, singletons

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


_VIEWS = {
    "mixer.weight_proj.weight": singletons(2, 3),
    "ls1.weight": singletons(1, 2, 3),
    "ls2.weight": singletons(1, 2, 3),
    "mlp.3.gamma": singletons(0, 2, 3),
    "mlp.3.beta": singletons(0, 2, 3),
}
CONTMIX_BLOCK = Signature(
    dim=(int, 64),
    kernel_size=(int, 7),
    smk_size=(int, 5),
    num_heads=(int, 2),
    mlp_ratio=(float, 4.0),
    res_scale=(bool, False),
    ls_init_value=(float | None, None),
    drop_path=(float, 0.0),
    use_gemm=(bool, False),
    deploy=(bool, False),
    use_checkpoint=(bool, False),
    unsupported=("norm_layer",),
)


def _keys(kernel_size: int) -> KeyMap:
    prefixes = list(_PREFIXES)
    for i, (k, r) in enumerate(DILATED_BRANCHES[kernel_size]):
        prefixes.append((f"lepe.0.dil_conv_k{k}_{r}.", f"mixer.lepe.branches.{i}.0."))
        prefixes.append((f"lepe.0.dil_bn_k{k}_{r}.", f"mixer.lepe.branches.{i}.1."))
    return KeyMap(renames=prefixes, views=_VIEWS)


def convert_contmix_block(
    state_dict: Mapping[str, torch.Tensor], kernel_size: int
) -> dict[str, torch.Tensor]:
    """Official ``ContMixBlock`` keys -> :class:`ContMixBlock` keys (shapes adapted)."""
    return _keys(kernel_size).to_attnzoo(state_dict)


@adapter("overlock_contmix", {"ContMixBlock": CONTMIX_BLOCK})
def load_contmix(kw: dict[str, Any], symbol: str) -> Conversion:
    module = ContMixBlock(
        kw["dim"],
        kw["kernel_size"],
        kw["smk_size"],
        kw["num_heads"],
        kw["mlp_ratio"],
        res_scale=kw["res_scale"],
        ls_init_value=kw["ls_init_value"],
        drop_path=kw["drop_path"],
        fused_lepe=kw["deploy"],
    )
    keys = _keys(kw["kernel_size"])
    return Conversion(module, lambda m, x: (m(x),), keys.to_attnzoo, keys.to_official)
