"""Circuit search by path patching and the comparison of two tasks' circuits (component reuse).

Merullo, Eickhoff and Pavlick, "Circuit Component Reuse Across Tasks in Transformer Language
Models" (ICLR 2024, arXiv 2310.08744) find the IOI circuit of GPT-2 medium by path patching
(Wang et al. 2022), find the circuit of the Colored Objects task the same way, and compare them:
the in-circuit heads overlap by about 78%, and intervening on shared middle-layer heads changes
the second task's behaviour. attnzoo provides the three steps:

* :func:`search_circuit`: path patching stage by stage, backwards from the logits: stage 0 ranks
  every head by its effect through the paths that end in the logits; stage ``s`` ranks every head
  by its effect through the queries, keys or values of the heads chosen at stage ``s - 1``; each
  stage keeps the ``per_stage`` heads of largest ``|effect|`` above ``min_effect``.
* :func:`compare_circuits`: shared heads, intersection over union, overlap coefficient and the
  correlation of the two tasks' per-head effects on the logits.
* :func:`intervene_heads`: the logit difference and accuracy of each task with a set of heads
  mean-ablated (their output replaced by its mean over the task's corrupted prompts, Wang et al.'s
  ablation), against equally many randomly drawn other heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from attnzoo.analysis.hooks import HookError, attention_layers
from attnzoo.analysis.metrics import MetricCard, register_metric
from attnzoo.analysis.patching import (
    Head,
    PatchResult,
    activation_patching,
    cache_sites,
    logit_difference,
    path_patching,
    prompt_accuracy,
    run_edited,
)
from attnzoo.analysis.templates import ContrastPrompts
from attnzoo.capture import capture
from attnzoo.checks import check_float, check_int

__all__ = ["Circuit", "compare_circuits", "intervene_heads", "role_attention", "search_circuit"]


@dataclass
class Circuit:
    """The heads a path-patching search kept, stage by stage.

    Attributes:
        task: the prompts' name.
        stages: per stage ``{"receivers": [...], "site": site, "selected": [[layer, head, effect]]}``.
        results: the :class:`PatchResult` of every stage and site, ``{"0:logits": ..., "1:q": ...}``.
    """

    task: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, PatchResult] = field(default_factory=dict)

    @property
    def heads(self) -> list[Head]:
        """Every selected head, in the order of selection."""
        return list(dict.fromkeys((int(i), int(h)) for st in self.stages for i, h, _, _ in st["selected"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "heads": [list(h) for h in self.heads],
            "stages": self.stages,
            "results": {k: r.to_dict() for k, r in self.results.items()},
        }


def _best(results: Mapping[str, PatchResult], exclude: set[Head]) -> list[tuple[Head, float, str]]:
    """Per head, its largest-``|effect|`` site: ``[(head, effect, site)]`` sorted by ``|effect|``."""
    best: dict[Head, tuple[float, str]] = {}
    for site, r in results.items():
        for head, eff in r.ranking():
            if head not in exclude and abs(eff) > abs(best.get(head, (0.0, ""))[0]):
                best[head] = (eff, site)
    return sorted(((h, e, s) for h, (e, s) in best.items()), key=lambda x: -abs(x[1]))


def search_circuit(
    model: nn.Module,
    prompts: ContrastPrompts,
    *,
    stages: int = 2,
    per_stage: int = 2,
    min_effect: float = 0.05,
    sites: Sequence[str] = ("q", "k", "v"),
    freeze_mlps: bool = False,
    progress: bool = False,
) -> Circuit:
    """Find the heads of ``prompts``' circuit by stage-wise path patching (noising direction).

    Args:
        stages: path-patching stages (stage 0: paths to the logits).
        per_stage: heads kept per stage (at most).
        min_effect: smallest ``|effect|`` (normalised, see :class:`PatchResult`) a kept head needs.
        sites: the receiver inputs of the later stages.
        freeze_mlps: see :func:`path_patching`.
    """
    stages = check_int(stages, "stages")
    per_stage = check_int(per_stage, "per_stage")
    min_effect = check_float(min_effect, "min_effect", minimum=0.0)
    circuit = Circuit(prompts.name)
    receivers: list[Head] = []
    chosen: set[Head] = set()
    for stage in range(stages):
        if stage == 0:
            found = {"logits": path_patching(model, prompts, freeze_mlps=freeze_mlps, progress=progress)}
        else:
            found = {
                s: path_patching(
                    model,
                    prompts,
                    receivers=receivers,
                    receiver_site=s,
                    freeze_mlps=freeze_mlps,
                    progress=progress,
                )
                for s in sites
            }
        circuit.results.update({f"{stage}:{s}": r for s, r in found.items()})
        ranked = [x for x in _best(found, chosen) if abs(x[1]) >= min_effect][:per_stage]
        circuit.stages.append(
            {
                "receivers": [list(r) for r in receivers] if stage else "logits",
                "selected": [[i, h, round(e, 5), s] for (i, h), e, s in ranked],
            }
        )
        if not ranked:
            break
        receivers = [h for h, _, _ in ranked]
        chosen |= set(receivers)
    return circuit


def compare_circuits(a: Circuit, b: Circuit) -> dict[str, Any]:
    """Overlap of two circuits' heads and the correlation of their stage-0 effects."""
    ha, hb = set(a.heads), set(b.heads)
    shared = sorted(ha & hb)
    union = ha | hb
    ea = a.results["0:logits"].effect.flatten()
    eb = b.results["0:logits"].effect.flatten()
    ok = ~(ea.isnan() | eb.isnan())
    corr = float(np.corrcoef(ea[ok].numpy(), eb[ok].numpy())[0, 1]) if int(ok.sum()) > 1 else math.nan
    return {
        "tasks": [a.task, b.task],
        "heads": {a.task: sorted(ha), b.task: sorted(hb)},
        "shared": shared,
        "only": {a.task: sorted(ha - hb), b.task: sorted(hb - ha)},
        "iou": len(shared) / len(union) if union else math.nan,
        "overlap": len(shared) / min(len(ha), len(hb)) if ha and hb else math.nan,
        "logit_effect_correlation": corr,
    }


def _mean_ablated(
    model: nn.Module, prompts: ContrastPrompts, heads: Sequence[Head]
) -> tuple[torch.Tensor, torch.Tensor]:
    layers = attention_layers(model)
    cache, _ = cache_sites(model, prompts.corrupt, layers, ["z"])
    edits = {}
    for i in {h[0] for h in heads}:
        chosen = [h for j, h in heads if j == i]
        mean = cache[(i, "z")].mean(0, keepdim=True)

        def edit(x: torch.Tensor, chosen: list[int] = chosen, mean: torch.Tensor = mean) -> torch.Tensor:
            x = x.clone()
            x[:, :, chosen] = mean[:, :, chosen].expand(x.shape[0], -1, -1, -1)
            return x

        edits[(i, "z")] = edit
    logits = run_edited(model, prompts.clean, layers, edits)
    return logit_difference(logits, prompts), prompt_accuracy(logits, prompts)


def intervene_heads(
    model: nn.Module,
    tasks: Mapping[str, ContrastPrompts],
    heads: Sequence[Head],
    *,
    control_draws: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean-ablate ``heads`` on every task and compare with random head sets of the same size.

    Returns:
        ``{task: {"baseline": {...}, "ablated": {...}, "control": {...}}}`` with the mean logit
        difference and accuracy of each (the control: mean and standard deviation over
        ``control_draws`` random sets of ``len(heads)`` heads from outside ``heads``).
    """
    heads = [(int(i), int(h)) for i, h in heads]
    if not heads:
        raise ValueError("intervene_heads needs at least one head")
    layers = attention_layers(model)
    others = [(ly.index, h) for ly in layers for h in range(ly.num_heads) if (ly.index, h) not in heads]
    rng = np.random.default_rng(seed)
    draws = [
        [others[j] for j in rng.choice(len(others), len(heads), replace=False)]
        for _ in range(check_int(control_draws, "control_draws", minimum=0))
    ] if len(others) >= len(heads) else []  # fmt: skip
    out: dict[str, Any] = {}
    for name, prompts in tasks.items():
        logits = run_edited(model, prompts.clean, layers)
        ld, acc = _mean_ablated(model, prompts, heads)
        controls = [_mean_ablated(model, prompts, d) for d in draws]
        out[name] = {
            "baseline": {
                "logit_diff": float(logit_difference(logits, prompts).mean()),
                "accuracy": float(prompt_accuracy(logits, prompts).float().mean()),
            },
            "ablated": {"logit_diff": float(ld.mean()), "accuracy": float(acc.float().mean())},
            "control": {
                "draws": len(draws),
                "logit_diff": float(np.mean([float(c[0].mean()) for c in controls])) if draws else math.nan,
                "logit_diff_std": float(np.std([float(c[0].mean()) for c in controls]))
                if draws
                else math.nan,
                "accuracy": float(np.mean([float(c[1].float().mean()) for c in controls]))
                if draws
                else math.nan,
            },
        }
    return out


def role_attention(model: nn.Module, prompts: ContrastPrompts, heads: Sequence[Head]) -> dict[str, Any]:
    """Mean attention of each of ``heads`` from the last scored position to every template role of
    ``prompts`` (``prompts.roles``), on the clean prompts: ``{"L{layer}H{head}": {role: share}}``.

    Raises:
        HookError: the model's attention cannot be captured per layer (see :func:`attnzoo.capture`).
    """
    layers = attention_layers(model)
    with torch.no_grad(), capture(model) as cap:
        run_edited(model, prompts.clean, layers)
    rows = torch.arange(len(prompts))
    query = prompts.positions[:, -1]
    out: dict[str, Any] = {}
    for i, h in heads:
        name = layers[i].name
        if name not in cap.names():
            raise HookError(f"no attention was captured for {name}; recorded: {cap.names()}")
        probs = cap[name][0].probs[rows, h, query]  # (S, N)
        out[f"L{i}H{h}"] = {
            role: round(float(probs[rows, pos].mean()), 4)
            for role, pos in prompts.roles.items()
            if role != "END"
        }
    return out


_MERULLO = (
    "Merullo, Eickhoff and Pavlick, Circuit Component Reuse Across Tasks in Transformer Language "
    "Models (ICLR 2024)"
)
register_metric(
    MetricCard(
        name="activation_patching",
        summary="Logit-difference change when one head's output (or q/k/v) is patched from the other run.",
        definition="m(x_base with site(l, h) := site(l, h)(x_source)); "
        "effect = (m - m_base) / (m_clean - m_corrupt), "
        "m = mean logit[correct] - logit[wrong] at the scored positions",
        paper="Meng et al., Locating and Editing Factual Associations in GPT (ROME, 2022); the "
        "logit-difference metric and head-level patching as in Wang et al., Interpretability in the "
        "Wild (2022)",
        arxiv="2202.05262",
        output="PatchResult (layers, heads)",
        fn=activation_patching,
        defaults=MappingProxyType({"site": "z", "direction": "denoising"}),
        notes=(
            "Equal to transformer_lens.patching.get_act_patch_attn_head_{out,q,k,v}_all_pos on the "
            "same model (tests/analysis/test_patching.py).",
            "q and k are read before rotary embeddings (TransformerLens' hook_q/hook_k).",
        ),
    )
)
register_metric(
    MetricCard(
        name="path_patching",
        summary="Effect of one sender head through the paths into the receivers (logits, or heads' q/k/v).",
        definition="1) x_base with z(sender) := z(sender)(x_source), every other head's z frozen to "
        "x_base, receivers' inputs recorded; 2) x_base with only the receivers' inputs set to the "
        "recorded values; effect as for activation_patching",
        paper="Wang et al., Interpretability in the Wild: a Circuit for Indirect Object Identification "
        "in GPT-2 small (2022); used by " + _MERULLO,
        arxiv="2211.00593",
        output="PatchResult (layers, heads)",
        fn=path_patching,
        defaults=MappingProxyType({"direction": "noising", "freeze_mlps": False}),
        notes=(
            "MLPs are recomputed, as in Wang et al.; freeze_mlps=True keeps only the direct edge and "
            "then equals transformer_lens.patching.get_act_patch_direct_path "
            "(tests/analysis/test_patching.py).",
            "Senders and receivers are patched at every position.",
        ),
    )
)
register_metric(
    MetricCard(
        name="circuit_overlap",
        summary="Shared heads of two tasks' path-patching circuits, and the effect of ablating them.",
        definition="IoU = |A ∩ B| / |A ∪ B|, overlap = |A ∩ B| / min(|A|, |B|) over the heads "
        "search_circuit keeps; intervention: mean-ablation of the shared heads on both tasks against "
        "random head sets",
        paper=_MERULLO,
        arxiv="2310.08744",
        output="dict",
        fn=compare_circuits,
        defaults=MappingProxyType({"stages": 2, "per_stage": 2, "min_effect": 0.05}),
        notes=(
            "Merullo et al. keep the top 2% heads per path-patching stage of GPT-2 medium (384 heads); "
            "attnzoo keeps per_stage heads with |effect| >= min_effect, fitting small models.",
            "Merullo et al.'s intervention re-targets the attention of four inhibition heads to repair "
            "the Colored Objects task; attnzoo mean-ablates the shared heads (Wang et al.'s ablation) "
            "and compares with random head sets of the same size; attention re-targeting is not "
            "implemented.",
        ),
    )
)
