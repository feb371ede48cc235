"""Head attribution by intervention: head importance by ablation and Ships.

* :func:`ablate_heads` zeroes chosen heads' outputs (their slice of ``probs @ V`` before the
  output projection), in ``transformers`` models (through the eager attention function, see
  :mod:`attnzoo.analysis.hf`) and in attnzoo mechanisms that merge heads into an ``nn.Linear``
  called ``proj`` (``mhsa`` and its relatives).
* :func:`head_importance` — Li et al., "How Does Attention Work in Vision Transformers? A Visual
  Analytics Attempt" (PacificVis / TVCG 2023, arXiv 2303.13731): a head's importance is how much a
  task score drops when that head alone is pruned, ``I(l, h) = S(model) - S(model without head
  (l, h))``; the paper uses classification accuracy (and loss-based variants) as ``S``.
* :func:`ships` — Zhou et al., "On the Role of Attention Heads in Large Language Model Safety"
  (ICLR 2025, arXiv 2410.13708): Ships(h) = KL(p(. | x) || p_h(. | x)), the KL divergence of the
  next-token distribution at the last position when head h's queries are scaled by
  ``epsilon`` ("undifferentiated attention": its attention becomes uniform over the allowed keys).
  The official code uses ``epsilon = 1e-4`` on the queries (``mask_qkv=['q']``), the default here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from attnzoo.analysis.hf import edit_heads, hf_attention_modules, num_heads_of
from attnzoo.analysis.metrics import MetricCard, register_metric

__all__ = ["ablate_heads", "attention_heads", "head_importance", "ships"]


def attention_heads(model: nn.Module) -> dict[str, int]:
    """``{module name: number of heads}`` of every attention module :func:`ablate_heads` can edit."""
    found = {name: num_heads_of(m) for name, m in hf_attention_modules(model).items()}
    for name, module in model.named_modules():
        if name not in found and _has_head_projection(module):
            found[name] = int(module.num_heads)
    return found


def _has_head_projection(module: nn.Module) -> bool:
    return isinstance(getattr(module, "proj", None), nn.Linear) and isinstance(
        getattr(module, "num_heads", None), int
    )


@contextmanager
def ablate_heads(model: nn.Module, heads: Mapping[str, Sequence[int]]) -> Iterator[None]:
    """Zero the outputs of ``heads = {module name: [head, ...]}`` while active.

    Raises:
        KeyError: a name is not an attention module of ``model`` (the message lists them).
        ValueError: a head index is out of range.
    """
    modules = dict(model.named_modules())
    hf = hf_attention_modules(model)
    hf_zero: dict[str, Sequence[int]] = {}
    with ExitStack() as stack:
        for name, chosen in heads.items():
            if name in hf:
                hf_zero[name] = chosen
                continue
            module = modules.get(name)
            if module is None or not _has_head_projection(module):
                known = sorted(attention_heads(model))
                raise KeyError(f"{name!r} is not an attention module of the model; known: {known}")
            stack.callback(_zero_proj_inputs(module, chosen).remove)
        if hf_zero:
            stack.enter_context(edit_heads(model, zero=hf_zero))
        yield


def _zero_proj_inputs(module: nn.Module, chosen: Sequence[int]) -> torch.utils.hooks.RemovableHandle:
    heads = int(module.num_heads)
    width = module.proj.in_features
    if width % heads:
        raise ValueError(f"proj input width {width} is not divisible by num_heads={heads}")
    if any(not 0 <= h < heads for h in chosen):
        raise ValueError(f"head indices {list(chosen)} out of range for {heads} heads")
    d = width // heads
    keep = torch.ones(width)
    for h in chosen:
        keep[h * d : (h + 1) * d] = 0

    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        return (x * keep.to(dtype=x.dtype, device=x.device), *args[1:])

    return module.proj.register_forward_pre_hook(hook)


def head_importance(
    model: nn.Module,
    score: Callable[[], torch.Tensor | float],
    heads: Mapping[str, int] | None = None,
) -> dict[tuple[str, int], float]:
    """Importance of each head as the drop of ``score()`` when that head alone is ablated.

    Args:
        model: the model ``score`` runs.
        score: runs the model on the evaluation data and returns a scalar where higher is better
            (accuracy, mean log-probability of the label, negative loss, ...).
        heads: ``{module name: number of heads}`` to test; default all (:func:`attention_heads`).

    Returns:
        ``{(module name, head): score(full) - score(without that head)}``.
    """
    heads = attention_heads(model) if heads is None else dict(heads)
    if not heads:
        raise ValueError("the model has no attention module that can be ablated")
    with torch.no_grad():
        base = float(score())
        out = {}
        for name, count in heads.items():
            for h in range(count):
                with ablate_heads(model, {name: [h]}):
                    out[(name, h)] = base - float(score())
    return out


def _last_positions(inputs: Mapping[str, Any], logits: torch.Tensor) -> torch.Tensor:
    mask = inputs.get("attention_mask")
    b, n = logits.shape[:2]
    if mask is None:
        return torch.full((b,), n - 1, dtype=torch.long, device=logits.device)
    idx = torch.arange(n, device=logits.device)
    return torch.where(mask.bool(), idx, -1).amax(-1)


def _next_token_logprobs(model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    logits = model(**inputs).logits
    last = _last_positions(inputs, logits)
    rows = logits[torch.arange(logits.shape[0], device=logits.device), last]
    return rows.double().log_softmax(-1)


def ships(
    model: nn.Module,
    inputs: Mapping[str, Any],
    heads: Mapping[str, int] | None = None,
    *,
    epsilon: float = 1e-4,
) -> dict[tuple[str, int], torch.Tensor]:
    """Ships score of each head: KL of the next-token distribution when its queries are scaled.

    Args:
        model: a ``transformers`` causal LM with eager attention (returns ``.logits``).
        inputs: its keyword inputs (``input_ids``, ``attention_mask``); the distribution is read
            at each sequence's last real token.
        heads: ``{module name: number of heads}``; default every attention module.
        epsilon: query scale (official code: 1e-4).

    Returns:
        ``{(module name, head): KL(p || p_head) per sequence (B,)}`` in nats.
    """
    available = {name: num_heads_of(m) for name, m in hf_attention_modules(model).items()}
    heads = available if heads is None else dict(heads)
    unknown = sorted(set(heads) - set(available))
    if unknown:
        raise KeyError(f"{unknown} are not attention modules of the model; known: {sorted(available)}")
    out = {}
    with torch.no_grad():
        base = _next_token_logprobs(model, inputs)
        for name, count in heads.items():
            for h in range(count):
                with edit_heads(model, query_scale={name: {h: epsilon}}):
                    edited = _next_token_logprobs(model, inputs)
                kl = torch.nn.functional.kl_div(edited, base, log_target=True, reduction="none")
                out[(name, h)] = kl.sum(-1)
    return out


register_metric(
    MetricCard(
        name="head_importance",
        summary="Drop of a task score when one head alone is pruned (its output zeroed).",
        definition="I(l, h) = S(model) - S(model with head (l, h) output set to 0)",
        paper="Li et al., How Does Attention Work in Vision Transformers? A Visual Analytics Attempt "
        "(PacificVis / TVCG 2023)",
        arxiv="2303.13731",
        output="{(module, head): float}",
        fn=head_importance,
        notes=(
            "S is any scalar where higher is better; the paper prunes one head at a time and uses "
            "classification accuracy (and loss-based variants).",
        ),
    )
)
register_metric(
    MetricCard(
        name="ships",
        summary="Ships: KL change of the next-token distribution when one head's queries are scaled down.",
        definition="Ships(h) = KL(p(. | x) || p_h(. | x)), p_h with head h's queries times epsilon, "
        "read at the last real token",
        paper="Zhou et al., On the Role of Attention Heads in Large Language Model Safety (ICLR 2025)",
        arxiv="2410.13708",
        output="{(module, head): (B,)}",
        fn=ships,
        defaults=MappingProxyType({"epsilon": 1e-4}),
        notes=(
            "epsilon = 1e-4 on the queries is the official code's setting (mask_qkv=['q'], "
            "scale_factor=1e-4); scaling q equals scaling W_q (and its bias) for that head.",
        ),
    )
)
