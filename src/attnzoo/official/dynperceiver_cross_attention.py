"""Official Dynamic Perceiver format: ``models/perceiver_core/modules.py`` of
LeapLabTHU/Dynamic_Perceiver, classes ``CrossAttentionLayer(num_heads, num_q_input_channels,
num_kv_input_channels, num_qk_channels=None, num_v_channels=None, widening_factor=1, dropout=0.0,
attention_residual=True, rpb=False, feat_w=32, feat_h=32)`` and the bare ``MultiHeadAttention``
(same arguments minus widening/residual, plus ``num_output_channels``).

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
from attnzoo.official import OfficialRun, adapter, load_converted

__all__ = ["convert_dynperceiver_attention", "convert_dynperceiver_cross_attention_layer"]

_SYMBOLS = ("CrossAttentionLayer", "MultiHeadAttention")


def convert_dynperceiver_attention(
    state_dict: Mapping[str, torch.Tensor], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Official ``MultiHeadAttention`` keys (under ``prefix``) -> :class:`PerceiverAttention` keys."""
    out = {f"{p}.weight": state_dict[f"{prefix}{p}.weight"] for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    out["o_proj.bias"] = state_dict[f"{prefix}o_proj.bias"]
    bias = state_dict.get(f"{prefix}relative_position_bias")
    if bias is not None:
        out["key_position_bias"] = bias.reshape(bias.shape[-2], bias.shape[-1])
    return out


def convert_dynperceiver_cross_attention_layer(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Official ``CrossAttentionLayer`` keys -> :class:`DynPerceiverCrossAttention` keys."""
    attn = convert_dynperceiver_attention(state_dict, "cross_attn.attention.")
    out = {f"attn.{k}": v for k, v in attn.items()}
    for ours, theirs in (
        ("q_norm", "cross_attn.q_norm"),
        ("kv_norm", "cross_attn.kv_norm"),
        ("mlp_norm", "mlp.layernorm"),
        ("fc1", "mlp.fc1"),
        ("fc2", "mlp.fc2"),
    ):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = state_dict[f"{theirs}.{p}"]
    return out


def _context_tokens(constructor: Mapping[str, Any], bias: torch.Tensor | None) -> int | None:
    if not constructor.get("rpb", False):
        if bias is not None:
            raise ValueError("checkpoint has relative_position_bias but rpb is False")
        return None
    tokens = int(constructor.get("feat_w", 32)) * int(constructor.get("feat_h", 32))
    if bias is None or bias.shape[-2] != tokens:
        raise ValueError(f"rpb=True needs relative_position_bias with feat_w*feat_h={tokens} positions")
    return tokens


def _key_padding(pad_mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if pad_mask is None else ~pad_mask


@adapter("dynperceiver_cross_attention")
def load_dynperceiver_cross_attention(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    symbol = symbol or (_SYMBOLS[0] if "cross_attn.q_norm.weight" in state_dict else _SYMBOLS[1])
    if symbol not in _SYMBOLS:
        raise ValueError(f"the dynperceiver_cross_attention format covers {_SYMBOLS}, got symbol {symbol!r}")
    prefix = "cross_attn.attention." if symbol == _SYMBOLS[0] else ""
    q_w = state_dict[f"{prefix}q_proj.weight"]
    qk, dim = q_w.shape
    context_dim = int(state_dict[f"{prefix}k_proj.weight"].shape[1])
    v_dim = int(state_dict[f"{prefix}v_proj.weight"].shape[0])
    for key, want in (("num_q_input_channels", dim), ("num_kv_input_channels", context_dim)):
        if int(constructor.get(key, want)) != want:
            raise ValueError(f"{key}={constructor[key]} disagrees with the checkpoint ({want})")
    heads = int(constructor.get("num_heads", 1))
    tokens = _context_tokens(constructor, state_dict.get(f"{prefix}relative_position_bias"))
    dropout = float(constructor.get("dropout", 0.0))
    if symbol == _SYMBOLS[1]:
        module: torch.nn.Module = PerceiverAttention(
            int(dim),
            context_dim,
            heads,
            qk_dim=int(qk),
            v_dim=v_dim,
            out_dim=int(state_dict["o_proj.weight"].shape[0]),
            context_tokens=tokens,
            attn_drop=dropout,
        )
        converted = convert_dynperceiver_attention(state_dict)

        def call_attention(
            m: PerceiverAttention, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None
        ) -> tuple[torch.Tensor]:
            return (m(x_q, x_kv, _key_padding(pad_mask)),)

        call = call_attention
    else:
        module = DynPerceiverCrossAttention(
            int(dim),
            context_dim,
            heads,
            qk_dim=int(qk),
            v_dim=v_dim,
            widening_factor=int(state_dict["mlp.fc1.weight"].shape[0]) // int(dim),
            attention_residual=bool(constructor.get("attention_residual", True)),
            context_tokens=tokens,
            dropout=dropout,
        )
        converted = convert_dynperceiver_cross_attention_layer(state_dict)

        def call_layer(
            m: DynPerceiverCrossAttention,
            x_q: torch.Tensor,
            x_kv: torch.Tensor,
            pad_mask: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor]:
            return (m(x_q, x_kv, mask=_key_padding(pad_mask)),)

        call = call_layer
    load_converted(module.to(q_w.dtype), converted)
    return OfficialRun(module.eval(), call)
