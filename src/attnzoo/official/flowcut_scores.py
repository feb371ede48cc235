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
from attnzoo.official import Choice, Conversion, Signature, adapter


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


FLOWCUT = Signature(
    num_heads=int,
    head_dim=int,
    num_layers=int,
    select_layer=(int | None, None),
    target=(int | None, None),
    target_num=(int, 128),
    select_feature=(Choice("patch", "cls_patch"), "patch"),
)


@adapter("flowcut_scores", {"CLIPEncoderLayer_forward": FLOWCUT})
def load_flowcut_scores(kw: dict[str, Any], symbol: str) -> Conversion:
    target = kw["target"]
    if target is None:
        target = kw["target_num"] + (1 if kw["select_feature"] == "patch" else 0)
    layers = kw["num_layers"]
    select = layers - 2 if kw["select_layer"] is None else kw["select_layer"]
    return Conversion(FlowCutEncoderReplay(kw["num_heads"], kw["head_dim"], layers, select, target), _call)
