"""Official BiFormer format: ``ops/bra_legacy.py::BiLevelRoutingAttention`` (NHWC input).

Constructor ``BiLevelRoutingAttention(dim, num_heads=8, n_win=7, qk_dim=None, qk_scale=None,
kv_per_win=4, kv_downsample_ratio=4, kv_downsample_kernel=None, kv_downsample_mode='identity',
topk=4, param_attention='qkvo', param_routing=False, diff_routing=False, soft_routing=False,
side_dwconv=3, auto_pad=False)``; forward ``module(x (B, H, W, C))``.

:func:`convert_biformer_bra` maps the checkpoint keys to
:class:`attnzoo.mechanisms.token_mixer.biformer_bra.BiLevelRoutingAttention`: ``qkv.qkv.*`` ->
``qkv.*`` (rows stay ``[q | k | v]``), ``wo.*`` -> ``proj.*``, ``lepe.*`` unchanged. Official
options attnzoo does not implement (kv down-sampling, parametric/differentiable/soft routing) are
rejected; ``kv_per_win``, ``kv_downsample_ratio`` and ``kv_downsample_kernel`` only matter for
kv down-sampling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.token_mixer.biformer_bra import BiLevelRoutingAttention
from attnzoo.official import CheckpointError, Choice, Conversion, Signature, adapter
from attnzoo.official.keys import KeyMap

__all__ = ["build_biformer_bra", "convert_biformer_bra"]

_KEYS = KeyMap(renames=(("qkv.qkv.", "qkv."), ("wo.", "proj.")))
_SYMBOL = "BiLevelRoutingAttention"
BRA = Signature(
    dim=int,
    num_heads=(int, 8),
    n_win=(int, 7),
    qk_dim=(int | None, None),
    qk_scale=(float | None, None),
    kv_per_win=(int, 4),
    kv_downsample_ratio=(int, 4),
    kv_downsample_kernel=(int | None, None),
    kv_downsample_mode=(Choice("identity"), "identity"),
    topk=(int, 4),
    param_attention=(Choice("qkvo", "qkv"), "qkvo"),
    param_routing=(Choice(False), False),
    diff_routing=(Choice(False), False),
    soft_routing=(Choice(False), False),
    side_dwconv=(int, 3),
    auto_pad=(bool, False),
)


def convert_biformer_bra(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``BiLevelRoutingAttention`` state_dict -> attnzoo state_dict."""
    return _KEYS.to_attnzoo(state_dict)


def _module(kw: Mapping[str, Any]) -> BiLevelRoutingAttention:
    return BiLevelRoutingAttention(
        kw["dim"],
        kw["num_heads"],
        kw["n_win"],
        kw["topk"],
        qk_dim=kw["qk_dim"] or None,
        qk_scale=kw["qk_scale"] or None,
        side_dwconv=kw["side_dwconv"],
        out_proj=kw["param_attention"] == "qkvo",
        auto_pad=kw["auto_pad"],
    )


def build_biformer_bra(constructor: Mapping[str, Any]) -> BiLevelRoutingAttention:
    """The attnzoo module equivalent to the official constructor kwargs (random weights).

    Raises :class:`CheckpointError` listing every unknown, unsupported or ill-typed argument."""
    kw, problems = BRA.check(constructor, _SYMBOL)
    if problems:
        raise CheckpointError(problems, f"official {_SYMBOL} constructor rejected")
    return _module(kw)


def _call(
    m: BiLevelRoutingAttention, x: torch.Tensor, ret_attn_mask: bool = False
) -> tuple[torch.Tensor, ...]:
    if ret_attn_mask:
        raise ValueError("ret_attn_mask=True (routing/attention outputs) is not supported")
    b, h, w, c = x.shape
    return (m(x.reshape(b, h * w, c), size=(h, w)).reshape(b, h, w, c),)


@adapter("biformer_bra", {_SYMBOL: BRA})
def load_biformer_bra(kw: dict[str, Any], symbol: str) -> Conversion:
    return Conversion(_module(kw), _call, _KEYS.to_attnzoo, _KEYS.to_official)
