"""Official FlowCut format: ``flowcut/modeling_clip_flowcut.py::CLIPEncoderLayer_forward`` with
``CLIPAttention_forward`` and ``flowcut/utils_flowcut.py`` (TungChintao/FlowCut).

No parameters. The fixture replays a whole encoder pass whose layers leave the residual stream
unchanged and feed FlowCut the stored projected ``q_l{l}``, ``k_l{l}``, ``v_l{l}`` ``(B, T_l, D)``;
the constructor gives ``num_heads``, ``head_dim``, ``num_layers``, ``select_layer`` and ``target``
(or ``target_num`` and ``select_feature``). The call returns every per-layer quantity the official
code forms, named as in the fixture and returned in sorted name order (the fixture's order):
``semantic_attn_l{l}``, ``v_metric_l{l}``, ``all_keep_indices_l{l}`` at every layer;
``cls_attention_l{l}``, ``scores_l{l}``, ``cumulative_scores_l{l}`` where ``T_l > target``;
``prune_num_l{l}`` where it prunes; the final ``hidden_states`` and ``all_keep_indices``.

Official keep-index convention: ``arange(1 + N)`` (token positions, CLS included) until the first
prune, 0-based patch indices afterwards. attnzoo's :class:`FlowCutState` always holds patch
indices; the adapter converts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from attnzoo.inference.flowcut import FlowCutState, flowcut_step
from attnzoo.kernels.attention import attention_reference, split_heads
from attnzoo.official import OfficialRun, adapter


class FlowCutEncoderReplay(nn.Module):
    """FlowCut over an encoder pass given each layer's projected q/k/v (no parameters)."""

    def __init__(
        self, num_heads: int, head_dim: int, num_layers: int, select_layer: int, target: int
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim = int(num_heads), int(head_dim)
        self.num_layers, self.select_layer, self.target = int(num_layers), int(select_layer), int(target)

    def forward(
        self, hidden_states: torch.Tensor, qkv: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        hidden = hidden_states
        b, t0, _ = hidden.shape
        state = FlowCutState.start(b, t0 - 1, hidden.device)
        out: dict[str, torch.Tensor] = {}
        for l in range(self.num_layers):
            q, k, v = (split_heads(qkv[f"{n}_l{l}"], self.num_heads) for n in "qkv")
            _, probs = attention_reference(q, k, v, scale=self.head_dim**-0.5, return_weights=True)
            hidden, state, info = flowcut_step(
                hidden, probs, v, state, rpl=self.select_layer - l - 1, target=self.target
            )
            out[f"semantic_attn_l{l}"] = info.semantic
            out[f"v_metric_l{l}"] = info.v_metric
            if info.cls_attention is not None:
                out[f"cls_attention_l{l}"] = info.cls_attention
                out[f"scores_l{l}"] = info.scores
                out[f"cumulative_scores_l{l}"] = info.cumulative
            if info.prune_num is not None:
                out[f"prune_num_l{l}"] = torch.tensor(info.prune_num, dtype=torch.int64)
            out[f"all_keep_indices_l{l}"] = _official_keep(state, b, t0)
        out["hidden_states"] = hidden
        out["all_keep_indices"] = _official_keep(state, b, t0)
        return out


def _official_keep(state: FlowCutState, batch: int, tokens: int) -> torch.Tensor:
    if state.pruned:
        return state.kept
    return torch.arange(tokens, device=state.kept.device).unsqueeze(0).expand(batch, -1)


def _call(
    module: FlowCutEncoderReplay, hidden_states: torch.Tensor, **kwargs: Any
) -> tuple[torch.Tensor, ...]:
    qkv = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    out = module(hidden_states, qkv)
    return tuple(out[name] for name in sorted(out))


@adapter("flowcut_scores")
def load_flowcut_scores(
    constructor: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], symbol: str | None
) -> OfficialRun:
    if state_dict:
        raise ValueError(f"FlowCut has no parameters, got state_dict keys {sorted(state_dict)}")
    target = constructor.get("target")
    if target is None:
        target = int(constructor["target_num"]) + (
            1 if constructor.get("select_feature", "patch") == "patch" else 0
        )
    num_layers = int(constructor["num_layers"])
    module = FlowCutEncoderReplay(
        constructor["num_heads"],
        constructor["head_dim"],
        num_layers,
        constructor.get("select_layer", num_layers - 2),
        target,
    )
    return OfficialRun(module.eval(), _call)
