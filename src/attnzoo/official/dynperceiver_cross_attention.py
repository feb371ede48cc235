"""Official Dynamic Perceiver format: ``models/perceiver_core/modules.py`` of
LeapLabTHU/Dynamic_Perceiver, classes ``CrossAttentionLayer(num_heads, num_q_input_channels,
num_kv_input_channels, num_qk_channels=None, num_v_channels=None, widening_factor=1, dropout=0.0,
attention_residual=True, rpb=False, feat_w=32, feat_h=32)`` and the bare ``MultiHeadAttention``
(same arguments minus widening/residual, plus ``num_output_channels=None``). Defaults as
officially: ``num_qk_channels = num_q_input_channels``, ``num_v_channels = num_qk_channels``,
``num_output_channels = num_q_input_channels``.

``forward(x_q, x_kv, pad_mask=None)`` with ``pad_mask (B, L)`` True = padded. Keys:
``cross_attn.{q_norm,kv_norm}.*``, ``cross_attn.attention.{q,k,v}_proj.weight``,
``cross_attn.attention.o_proj.*``, ``cross_attn.attention.relative_position_bias (1, L, qk)``,
``mlp.{layernorm,fc1,fc2}.*`` (``MultiHeadAttention``: the attention keys without prefix).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.cross_attention.dynperceiver_cross_attention import (
    DynPerceiverCrossAttention,
    PerceiverAttention,
)
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap, singletons

__all__ = ["convert_dynperceiver_attention", "convert_dynperceiver_cross_attention_layer"]

_ATTENTION_KEYS = KeyMap(
    renames=(("relative_position_bias", "key_position_bias"),), views={"key_position_bias": singletons(0)}
)
_LAYER_KEYS = KeyMap(
    renames=(
        ("cross_attn.attention.", "attn."),
        ("cross_attn.attention.relative_position_bias", "attn.key_position_bias"),
        ("cross_attn.q_norm.", "q_norm."),
        ("cross_attn.kv_norm.", "kv_norm."),
        ("mlp.layernorm.", "mlp_norm."),
        ("mlp.fc1.", "fc1."),
        ("mlp.fc2.", "fc2."),
    ),
    views={"attn.key_position_bias": singletons(0)},
)
_COMMON = {
    "num_heads": int,
    "num_q_input_channels": int,
    "num_kv_input_channels": int,
    "num_qk_channels": (int | None, None),
    "num_v_channels": (int | None, None),
    "dropout": (float, 0.0),
    "rpb": (bool, False),
    "feat_w": (int, 32),
    "feat_h": (int, 32),
}
_SIGNATURES = {
    "CrossAttentionLayer": Signature(**_COMMON, widening_factor=(int, 1), attention_residual=(bool, True)),
    "MultiHeadAttention": Signature(**_COMMON, num_output_channels=(int | None, None)),
}


def convert_dynperceiver_attention(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``MultiHeadAttention`` keys -> :class:`PerceiverAttention` keys."""
    return _ATTENTION_KEYS.to_attnzoo(state_dict)


def convert_dynperceiver_cross_attention_layer(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Official ``CrossAttentionLayer`` keys -> :class:`DynPerceiverCrossAttention` keys."""
    return _LAYER_KEYS.to_attnzoo(state_dict)


def _key_padding(pad_mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if pad_mask is None else ~pad_mask


def _call_attention(
    m: PerceiverAttention, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor]:
    return (m(x_q, x_kv, _key_padding(pad_mask)),)


def _call_layer(
    m: DynPerceiverCrossAttention, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor]:
    return (m(x_q, x_kv, mask=_key_padding(pad_mask)),)


@adapter("dynperceiver_cross_attention", _SIGNATURES)
def load_dynperceiver_cross_attention(kw: dict[str, Any], symbol: str) -> Conversion:
    dim, context_dim = kw["num_q_input_channels"], kw["num_kv_input_channels"]
    qk = kw["num_qk_channels"] or dim
    v = kw["num_v_channels"] or qk
    tokens = kw["feat_w"] * kw["feat_h"] if kw["rpb"] else None
    if symbol == "MultiHeadAttention":
        module = PerceiverAttention(
            dim,
            context_dim,
            kw["num_heads"],
            qk_dim=qk,
            v_dim=v,
            out_dim=kw["num_output_channels"] or dim,
            context_tokens=tokens,
            attn_drop=kw["dropout"],
        )
        return Conversion(module, _call_attention, _ATTENTION_KEYS.to_attnzoo, _ATTENTION_KEYS.to_official)
    layer = DynPerceiverCrossAttention(
        dim,
        context_dim,
        kw["num_heads"],
        qk_dim=qk,
        v_dim=v,
        widening_factor=kw["widening_factor"],
        attention_residual=kw["attention_residual"],
        context_tokens=tokens,
        dropout=kw["dropout"],
    )
    return Conversion(layer, _call_layer, _LAYER_KEYS.to_attnzoo, _LAYER_KEYS.to_official)
