"""Official FSG ViT block: ``modules/models/fsg_vision_transformers.py::Block`` of
cosmoimd/feature-selection-gates.

Keys map one-to-one onto :class:`HardGatedViTBlock` except the gates: ``fsag_rgb_ls1`` ->
``gate1.logits`` and ``fsag_rgb_ls2`` -> ``gate2.logits`` (raw logits, the sigmoid is applied in
forward, in both codes). ``init_values`` and ``drop_path`` are accepted and ignored, as officially.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.feature_map.hard_attention_gate import HardGatedViTBlock
from attnzoo.official import OfficialRun, adapter, load_converted

_GATES = {"fsag_rgb_ls1": "gate1.logits", "fsag_rgb_ls2": "gate2.logits"}
_IGNORED = ("init_values", "drop_path")
_SUPPORTED = ("dim", "num_heads", "mlp_ratio", "qkv_bias", "qk_norm", "attn_drop", "proj_drop", *_IGNORED)


def convert_fsg_block_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official FSG ``Block`` state_dict -> :class:`HardGatedViTBlock` state_dict."""
    missing = [k for k in _GATES if k not in state_dict]
    if missing:
        raise ValueError(f"not an FSG Block checkpoint: missing gate logits {missing}")
    return {_GATES.get(k, k): v for k, v in state_dict.items()}


@adapter("hard_attention_gate")
def load_fsg_block(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if symbol not in (None, "Block"):
        raise ValueError(f"hard_attention_gate converts the FSG ViT Block, got symbol {symbol!r}")
    unknown = sorted(set(constructor) - set(_SUPPORTED))
    if unknown:
        raise ValueError(f"unsupported FSG Block constructor arguments {unknown} (supported: {_SUPPORTED})")
    converted = convert_fsg_block_state_dict(state_dict)
    module = HardGatedViTBlock(
        int(constructor["dim"]),
        int(constructor["num_heads"]),
        mlp_ratio=float(constructor.get("mlp_ratio", 4.0)),
        qkv_bias=bool(constructor.get("qkv_bias", False)),
        qk_norm=bool(constructor.get("qk_norm", False)),
        attn_drop=float(constructor.get("attn_drop", 0.0)),
        proj_drop=float(constructor.get("proj_drop", 0.0)),
    )
    load_converted(module.to(converted["gate1.logits"].dtype), converted)
    return OfficialRun(module.eval(), lambda m, x: (m(x),))
