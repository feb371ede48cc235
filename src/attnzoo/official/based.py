"""Official Zoology format: ``zoology/mixers/based.py::Based`` (HazyResearch/zoology).

Keys ``proj_q.weight (h*d, C)``, ``proj_k.weight (h*d, C)``, ``proj_v.weight (h*d_v, C)`` and
``proj_o.weight (C, h*d_v)`` map one to one onto :class:`BasedAttention`; ``d = feature_dim`` and
``d_v = d_model // num_key_value_heads`` (floor) are checked against the weights. ``train_view``
('linear' or 'quadratic') does not change the function. Only the configurations the official
pure-PyTorch path runs are accepted: ``taylor_exp`` feature map, no rotary embeddings and
``num_heads == num_key_value_heads``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.token_mixer.based import BasedAttention
from attnzoo.official import OfficialRun, adapter, load_converted

_KEYS = ("proj_q.weight", "proj_k.weight", "proj_v.weight", "proj_o.weight")


def _check_shape(state_dict: Mapping[str, torch.Tensor], key: str, shape: tuple[int, int]) -> None:
    got = tuple(state_dict[key].shape)
    if got != shape:
        raise ValueError(f"official {key} has shape {got}, expected {shape} from the constructor")


@adapter("based")
def load_based(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if symbol not in (None, "Based"):
        raise ValueError(f"the 'based' format covers zoology.mixers.based.Based only, got symbol {symbol!r}")
    d_model = int(constructor["d_model"])
    feature_dim = int(constructor.get("feature_dim", 16))
    num_heads = int(constructor.get("num_heads", 12))
    num_kv_heads = int(constructor.get("num_key_value_heads", 12))
    feature_name = constructor.get("feature_name", "taylor_exp")
    if feature_name != "taylor_exp":
        raise ValueError(f"only feature_name='taylor_exp' is supported, got {feature_name!r}")
    if constructor.get("apply_rotary", False):
        raise ValueError("apply_rotary=True (rotary embeddings) is not supported")
    if num_kv_heads != num_heads:
        raise ValueError(
            f"num_key_value_heads={num_kv_heads} must equal num_heads={num_heads} "
            "(the official non-rotary path has no repeat_kv)"
        )
    if constructor.get("train_view", "linear") not in ("linear", "quadratic"):
        raise ValueError(f"train_view must be 'linear' or 'quadratic', got {constructor['train_view']!r}")
    head_dim = d_model // num_kv_heads
    missing = [k for k in _KEYS if k not in state_dict]
    extra = sorted(set(state_dict) - set(_KEYS))
    if missing or extra:
        raise ValueError(f"not an official Based state_dict: missing {missing}, unexpected {extra}")
    _check_shape(state_dict, "proj_q.weight", (num_heads * feature_dim, d_model))
    _check_shape(state_dict, "proj_k.weight", (num_heads * feature_dim, d_model))
    _check_shape(state_dict, "proj_v.weight", (num_heads * head_dim, d_model))
    _check_shape(state_dict, "proj_o.weight", (d_model, num_heads * head_dim))
    module = BasedAttention(
        d_model,
        num_heads,
        feature_dim,
        head_dim=head_dim,
        causal=bool(constructor.get("causal", True)),
        eps=float(constructor.get("eps", 1e-12)),
    )
    weight = state_dict["proj_q.weight"]
    load_converted(module.to(weight.dtype), {k: state_dict[k] for k in _KEYS})
    return OfficialRun(module.eval(), lambda m, hidden_states: (m(hidden_states),))
