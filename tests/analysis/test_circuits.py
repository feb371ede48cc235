"""Circuit search, the comparison of two circuits and the mean-ablation of shared heads."""

from __future__ import annotations

import math

import pytest
import torch
from tests.analysis.circuit_helpers import random_lm

from attnzoo.analysis.circuits import (
    Circuit,
    compare_circuits,
    intervene_heads,
    role_attention,
    search_circuit,
)
from attnzoo.analysis.hooks import attention_layers
from attnzoo.analysis.patching import PatchResult, cache_sites, logit_difference, path_patching, run_edited
from attnzoo.analysis.templates import colored_objects_prompts, ioi_prompts


def test_search_keeps_the_largest_effects_stage_by_stage() -> None:
    model = random_lm(depth=2, heads=2)
    prompts = ioi_prompts(6, seed=0)
    circuit = search_circuit(model, prompts, stages=2, per_stage=1, min_effect=0.0)
    logits = path_patching(model, prompts)
    best = logits.ranking()[0]
    first = circuit.stages[0]["selected"]
    assert first == [[best[0][0], best[0][1], round(best[1], 5), "logits"]]
    assert set(circuit.results) == {"0:logits", "1:q", "1:k", "1:v"}
    if first[0][0] == 1:  # a layer-1 receiver: stage 1 can only find layer-0 senders
        assert all(s[0] == 0 for s in circuit.stages[1]["selected"])
    assert circuit.heads[0] == (first[0][0], first[0][1])
    strict = search_circuit(model, prompts, stages=2, per_stage=2, min_effect=1e9)
    assert strict.heads == [] and len(strict.stages) == 1


def _circuit(task: str, heads: list[tuple[int, int]], effect: torch.Tensor) -> Circuit:
    result = PatchResult("path", "logits", "noising", 1.0, 0.0, effect + 1.0)
    return Circuit(task, [{"receivers": "logits", "selected": [[i, h, 0.5, "logits"] for i, h in heads]}],
                   {"0:logits": result})  # fmt: skip


def test_compare_circuits_counts_the_overlap() -> None:
    eff = torch.tensor([[0.1, -0.2], [0.3, -0.4]])
    a = _circuit("a", [(1, 0), (1, 1), (0, 0)], eff)
    b = _circuit("b", [(1, 1), (0, 1)], -eff)
    out = compare_circuits(a, b)
    assert out["shared"] == [(1, 1)]
    assert out["iou"] == pytest.approx(1 / 4) and out["overlap"] == pytest.approx(1 / 2)
    assert out["logit_effect_correlation"] == pytest.approx(-1.0)
    assert out["only"] == {"a": [(0, 0), (1, 0)], "b": [(0, 1)]}


def test_intervention_is_mean_ablation_against_random_heads() -> None:
    model = random_lm(depth=2, heads=2)
    prompts = colored_objects_prompts(6, seed=1)
    out = intervene_heads(model, {"co": prompts}, [(1, 0)], control_draws=3, seed=0)["co"]
    layers = attention_layers(model)
    cache, _ = cache_sites(model, prompts.corrupt, layers, ["z"])
    mean = cache[(1, "z")].mean(0, keepdim=True)

    def ablate(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, 0] = mean[:, :, 0]
        return x

    expected = logit_difference(run_edited(model, prompts.clean, layers, {(1, "z"): ablate}), prompts).mean()
    assert out["ablated"]["logit_diff"] == pytest.approx(float(expected), abs=1e-5)
    assert out["control"]["draws"] == 3 and not math.isnan(out["control"]["logit_diff"])
    again = intervene_heads(model, {"co": prompts}, [(1, 0)], control_draws=3, seed=0)["co"]
    assert again == out
    with pytest.raises(ValueError, match="at least one head"):
        intervene_heads(model, {"co": prompts}, [])


def test_role_attention_reads_the_answer_rows() -> None:
    model = random_lm(depth=2, heads=2)
    prompts = ioi_prompts(4, seed=2)
    out = role_attention(model, prompts, [(1, 1)])
    assert set(out["L1H1"]) == {"IO", "S1", "S2"}
    assert all(0.0 <= v <= 1.0 for v in out["L1H1"].values())
