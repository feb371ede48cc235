"""FlowCut: information-flow token pruning inside a ViT / CLIP vision encoder.

Tong, Jin, Zhang, Zhang, Wang, Wen, Xu, Hou, Fang, Li, "FlowCut: Rethinking Redundancy via
Information Flow for Efficient Vision-Language Models", NeurIPS 2025, arXiv:2505.19536.
Official code: TungChintao/FlowCut (``flowcut/modeling_clip_flowcut.py``, ``flowcut/utils_flowcut.py``).

At encoder layer ``l`` with ``T = 1 + N`` tokens (CLS first), softmax attention ``A`` (heads ``h``)
and value states ``V (B, h, T, d)``, while ``T > target``:

* CLS relation ``c_j = mean_h A[h, 0, j]`` over the patches ``j = 1..N``;
* semantic attention ``s_j = mean_h softmax_t(V[h, 0] . V[h, t])_j`` (unscaled, over all tokens);
* score ``f_j = (c_j / sum c + s_j / sum s) * ||mean_h V[h, j]||_1`` (``s`` renormalised over the
  patches);
* cumulative score ``F = f`` at the first scoring layer, else ``F = ema F + (1 - ema) f``;
* with ``rpl = select_layer - l - 1`` remaining layers, prune when ``rpl`` is even:
  ``prune = round((N - (target - 1)) / sqrt(rpl) * (1 - H^2))`` with ``H`` the entropy of
  ``c / sum c`` divided by ``log N`` (maximum over the batch), or all surplus tokens at ``rpl = 0``;
  keep CLS and the ``max(T - prune, target) - 1`` patches of highest ``F`` in their original order.

The layer's own output is computed on all ``T`` tokens; the pruning acts on what the next layer
receives. ``target`` counts CLS (LLaVA's ``select_feature='patch'``: ``target_num + 1``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnzoo.checks import check_tensor
from attnzoo.inference.hf_edit import edit_attention
from attnzoo.kernels.attention import attention_reference

__all__ = [
    "LEDGER",
    "FlowCutLayer",
    "FlowCutState",
    "adaptive_prune_number",
    "cls_attention",
    "flowcut_scores",
    "flowcut_step",
    "flowcut_vision",
    "semantic_attention",
]


LEDGER = (
    "Keep indices: the official all_keep_indices holds token positions (arange(1 + N), CLS included) "
    "until the first prune and 0-based patch indices afterwards; attnzoo's FlowCutState.kept always "
    "holds patch indices (the official adapter converts).",
    "Entropy normaliser: official log(N) is torch.log of an int tensor, i.e. float32 even for float64 "
    "inputs; attnzoo uses math.log(N) in double precision (only matters within ~1e-7 of a .5 rounding "
    "boundary of the prune count).",
    "Applied through forward hooks on a transformers ViT / CLIP vision encoder (attention via "
    "attnzoo.kernels.attention_reference) instead of replacing CLIPEncoder/CLIPEncoderLayer/CLIPAttention "
    "forwards; the official LLM-stage relay (LLaVA-NeXT) and the Qwen2-VL variant are not included.",
    "A layer with more tokens than target after the selected layer (rpl < 0) raises; the official code "
    "cannot reach it (rpl = 0 always prunes to target).",
)


def cls_attention(probs: torch.Tensor) -> torch.Tensor:
    """``(B, N)``: head-mean attention of the CLS query (token 0) on the patches, from
    ``probs (B, h, T, T)``."""
    probs = check_tensor(probs, "probs", ndim=4)
    return probs[:, :, 0, 1:].mean(dim=1)


def semantic_attention(values: torch.Tensor) -> torch.Tensor:
    """``(B, T)``: head-mean of ``softmax_t(v_CLS . v_t)`` (unscaled) from ``values (B, h, T, d)``."""
    values = check_tensor(values, "values", ndim=4)
    _, probs = attention_reference(values[:, :, :1], values, values, scale=1.0, return_weights=True)
    return probs[:, :, 0].mean(dim=1)


def flowcut_scores(cls_attn: torch.Tensor, semantic: torch.Tensor, v_metric: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` FlowCut scores of the patches from the CLS relation ``(B, N)``, the semantic
    attention on the patches ``(B, N)`` and the head-mean values ``(B, N, d)``."""
    relation = cls_attn / cls_attn.sum(dim=-1, keepdim=True)
    sem = semantic / semantic.sum(dim=-1, keepdim=True)
    return (relation + sem) * v_metric.abs().sum(dim=-1)


def adaptive_prune_number(cls_attn: torch.Tensor, rpl: int, target_patches: int) -> int:
    """Number of patches to prune with ``rpl > 0`` layers left: ``round((N - target_patches) /
    sqrt(rpl) * (1 - H^2))`` with ``H`` the normalised entropy of the CLS relation (max over the
    batch; round half to even)."""
    if rpl <= 0:
        raise ValueError(f"rpl must be positive for the adaptive prune number, got {rpl}")
    n = cls_attn.shape[-1]
    prob = cls_attn / cls_attn.sum(dim=-1, keepdim=True)
    entropy = -(prob * prob.log()).sum(dim=-1) / math.log(n)
    r = (n - target_patches) / rpl**0.5 * (1 - entropy**2)
    return int(r.max().round())


@dataclass
class FlowCutState:
    """Carried between layers: ``cumulative (B, N_kept)`` scores (``None`` before the first scoring
    layer) and ``kept (B, N_kept)``, the original 0-based patch indices of the surviving patches."""

    cumulative: torch.Tensor | None
    kept: torch.Tensor
    pruned: bool = False

    @classmethod
    def start(cls, batch: int, num_patches: int, device: torch.device | None = None) -> FlowCutState:
        kept = torch.arange(num_patches, device=device).unsqueeze(0).expand(batch, -1)
        return cls(None, kept)


@dataclass
class FlowCutLayer:
    """What one layer computed (``None`` where the layer did not score or prune)."""

    semantic: torch.Tensor
    v_metric: torch.Tensor
    cls_attention: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    cumulative: torch.Tensor | None = None
    prune_num: int | None = None


def flowcut_step(
    hidden: torch.Tensor,
    probs: torch.Tensor,
    values: torch.Tensor,
    state: FlowCutState,
    *,
    rpl: int,
    target: int,
    ema: float = 0.5,
) -> tuple[torch.Tensor, FlowCutState, FlowCutLayer]:
    """One FlowCut layer: score, update the cumulative score and prune ``hidden (B, T, D)``.

    Args:
        hidden: the layer's output hidden states, CLS first.
        probs: the layer's attention probabilities ``(B, h, T, T)``.
        values: the layer's value states ``(B, h, T, d)``.
        state: carried state (:meth:`FlowCutState.start` before the first layer).
        rpl: remaining layers before the selected feature layer (``select_layer - l - 1``).
        target: tokens to keep at the end, CLS included.
        ema: weight of the previous cumulative score.
    """
    hidden = check_tensor(hidden, "hidden", ndim=3)
    b, t, _ = hidden.shape
    if probs.shape[0] != b or probs.shape[-1] != t or values.shape[-2] != t:
        raise ValueError(
            f"probs {tuple(probs.shape)} and values {tuple(values.shape)} do not fit "
            f"hidden {tuple(hidden.shape)}"
        )
    if target < 2:
        raise ValueError(f"target must keep CLS and at least one patch, got {target}")
    info = FlowCutLayer(semantic_attention(values), values.mean(dim=1))
    if t <= target:
        return hidden, state, info
    if rpl < 0:
        raise ValueError(f"{t} tokens exceed target={target} after the selected layer (rpl={rpl})")
    info.cls_attention = cls_attention(probs)
    info.scores = flowcut_scores(info.cls_attention, info.semantic[:, 1:], info.v_metric[:, 1:])
    cumulative = (
        info.scores.clone() if state.cumulative is None else ema * state.cumulative + (1 - ema) * info.scores
    )
    kept, pruned = state.kept, state.pruned
    if rpl % 2 == 0:
        info.prune_num = adaptive_prune_number(info.cls_attention, rpl, target - 1) if rpl else t
        keep = max(t - info.prune_num, target) - 1
        idx = cumulative.topk(keep, dim=1).indices.sort(dim=1).values
        patches = hidden[:, 1:].gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        hidden = torch.cat([hidden[:, :1], patches], dim=1)
        cumulative = cumulative.gather(1, idx)
        kept, pruned = kept.gather(1, idx), True
    info.cumulative = cumulative
    return hidden, FlowCutState(cumulative, kept, pruned), info


def _encoder_layers(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``[(layer, attention)]`` of a ``transformers`` ViT / CLIP vision encoder, in order."""
    found = []
    for module in model.modules():
        for name in ("self_attn", "attention"):
            attn = getattr(module, name, None)
            if isinstance(attn, nn.Module) and all(hasattr(attn, p) for p in ("q_proj", "v_proj")):
                found.append((module, attn))
    if not found:
        raise ValueError(f"{type(model).__name__} has no encoder layers with a q_proj/v_proj attention")
    return found


@contextmanager
def flowcut_vision(
    model: nn.Module, target: int, *, select_layer: int | None = None, ema: float = 0.5
) -> Iterator[dict[str, Any]]:
    """Run a ``transformers`` ViT / CLIP vision model with FlowCut pruning in its encoder.

    Args:
        model: e.g. ``CLIPVisionModel`` or ``ViTModel``.
        target: tokens left after pruning, CLS included (LLaVA: ``target_num + 1``).
        select_layer: the layer whose input the downstream model reads (``rpl = select_layer - l - 1``);
            default ``L - 2`` as in LLaVA.
        ema: weight of the previous cumulative score.

    Yields a dict updated by every forward: ``"kept"`` (B, target - 1) original patch indices of
    the surviving patches and ``"layers"``, the per-layer :class:`FlowCutLayer` records.
    """
    layers = _encoder_layers(model)
    select = len(layers) - 2 if select_layer is None else int(select_layer)
    if not 1 <= select <= len(layers):
        raise ValueError(f"select_layer must be in 1..{len(layers)}, got {select}")
    result: dict[str, Any] = {}
    probs: dict[int, torch.Tensor] = {}
    values: dict[int, torch.Tensor] = {}
    handles = []

    def keep_probs(layer_probs: torch.Tensor, module: nn.Module) -> torch.Tensor:
        probs[id(module)] = layer_probs
        return layer_probs

    def num_heads(attn: nn.Module) -> int:
        for name in ("num_heads", "num_attention_heads"):
            if isinstance(getattr(attn, name, None), int):
                return getattr(attn, name)
        return int(attn.config.num_attention_heads)

    def value_hook(attn: nn.Module) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            heads = num_heads(attn)
            values[id(attn)] = out.view(*out.shape[:2], heads, -1).transpose(1, 2)

        return hook

    def layer_hook(idx: int, attn: nn.Module) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            if idx == 0:
                result.clear()
                result["state"] = FlowCutState.start(out.shape[0], out.shape[1] - 1, out.device)
                result["layers"] = []
            hidden, state, info = flowcut_step(
                out,
                probs.pop(id(attn)),
                values.pop(id(attn)),
                result["state"],
                rpl=select - idx - 1,
                target=target,
                ema=ema,
            )
            result["state"], result["kept"] = state, state.kept
            result["layers"].append(info)
            return hidden

        return hook

    for idx, (layer, attn) in enumerate(layers):
        handles.append(attn.v_proj.register_forward_hook(value_hook(attn)))
        handles.append(layer.register_forward_hook(layer_hook(idx, attn)))
    try:
        with edit_attention(model, {attn: keep_probs for _, attn in layers}):
            yield result
    finally:
        for h in handles:
            h.remove()
