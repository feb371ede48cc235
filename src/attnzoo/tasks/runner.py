"""Train a backbone with a chosen mechanism on a task under a fixed budget and measure quality.

One run = (task, preset, mechanism, seed, learning rate). The seed fixes the data, the
initialisation and the batch order, so a run repeats exactly on the same machine and thread count.
The same budget (steps, batch size, learning-rate schedule) applies to every mechanism on a preset.
Every ``eval_every`` steps a run measures its validation loss and accuracy and its test accuracy;
it stops early once its *validation* accuracy reaches the budget's target, and its reported
checkpoint is the evaluation of best validation accuracy (ties: lower validation loss, then the
earlier step), whose test accuracy is the run's number. The test split never chooses anything.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import attnzoo
from attnzoo.bench.measure import time_call
from attnzoo.tasks.backbones import MODEL_KEYS, build_model, task_refusals
from attnzoo.tasks.catalog import Budget, Preset, check_lrs, get_task
from attnzoo.tasks.data import IGNORE, Split, TaskData
from attnzoo.tasks.jobs import Backend, Job, Journal, execute
from attnzoo.tasks.make import check_seed

__all__ = ["MODEL_KEYS", "SELECTION", "build_model", "evaluate", "measure", "model_latency", "run_eval",
           "train_one"]

SELECTION = "validation"
"""The split that chooses checkpoints and learning rates in documents this module writes."""

def _batch(split: Split, idx: torch.Tensor) -> Split:
    return {k: v[idx] for k, v in split.items()}


def _loss_and_correct(model: nn.Module, kind: str, batch: Split) -> tuple[torch.Tensor, int, int]:
    """Loss of a batch, number of correct scored predictions and number scored."""
    if kind == "sequence":
        targets = batch["targets"]
        scored = targets != IGNORE
        hidden = model.hidden(batch["tokens"])[scored]
        logits = model.head(hidden)
        y = targets[scored]
        return F.cross_entropy(logits, y), int((logits.argmax(-1) == y).sum()), int(y.numel())
    if kind == "image":
        logits = model(batch["images"])
        y = batch["labels"]
        return F.cross_entropy(logits, y), int((logits.argmax(-1) == y).sum()), int(y.numel())
    logits, _ = model(batch["bags"], batch["mask"])
    y = batch["labels"]
    loss = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    return loss, int(((logits > 0).long() == y).sum()), int(y.numel())


@torch.no_grad()
def measure(
    model: nn.Module, data: TaskData, split: str = "test", batch_size: int = 256
) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` over the whole ``split`` (``"val"`` or ``"test"``) in eval
    mode: the mean loss and the share of correct predictions over every scored position (or
    example, or bag)."""
    was = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    tensors = data.split(split)
    n = data.size(split)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        loss, c, t = _loss_and_correct(model, data.kind, _batch(tensors, idx))
        loss_sum += float(loss) * t
        correct += c
        total += t
    model.train(was)
    return loss_sum / max(total, 1), correct / max(total, 1)


def evaluate(model: nn.Module, data: TaskData, batch_size: int = 256, split: str = "test") -> float:
    """Accuracy of ``model`` over the whole ``split`` (default: test), as :func:`measure` gives it."""
    return measure(model, data, split, batch_size)[1]


def model_latency(
    data: TaskData,
    preset: Preset,
    mechanism: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    batch_size: int,
    repeats: int = 10,
    budget_s: float = 10.0,
) -> dict[str, float]:
    """Forward wall time (ms: median, quartiles, min, runs) of ``mechanism``'s backbone, built as
    :func:`train_one` builds it (fresh weights: the time does not depend on them), in eval mode
    without gradients, on the first ``batch_size`` test examples of ``data`` (the forward pass and
    its loss, as :func:`evaluate` runs it), timed with the benchmark's
    :func:`~attnzoo.bench.measure.time_call` in this process's threads."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    torch.manual_seed(0)
    model, _ = build_model(data, preset, mechanism, overrides)
    model.eval()
    batch = _batch(data.test, torch.arange(min(batch_size, data.size("test"))))

    def fwd() -> None:
        with torch.no_grad():
            _loss_and_correct(model, data.kind, batch)

    return time_call(fwd, warmup=2, repeats=repeats, budget_s=budget_s)


def _lr_at(step: int, budget: Budget) -> float:
    if step < budget.warmup:
        return budget.lr * (step + 1) / budget.warmup
    progress = (step - budget.warmup) / max(1, budget.steps - budget.warmup)
    return budget.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_one(
    data: TaskData,
    preset: Preset,
    mechanism: str,
    *,
    seed: int = 0,
    budget: Budget | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``mechanism`` on ``data`` under ``budget`` (default: the preset's) and return the result.

    The result records the mechanism, backbone, parameter count, the budget and the history
    ``[{step, loss (training, smoothed), val_loss, val_accuracy, test_accuracy, seconds}]``, one
    entry per evaluation. The run's checkpoint is chosen on validation (:func:`_checkpoint`):
    ``selected_step`` with its ``val_accuracy``, ``val_loss`` and ``test_accuracy`` (the reported
    number); also ``final_val_accuracy`` and ``final_accuracy`` (test) at the last evaluation
    (``steps_run``), the step at which validation accuracy reached the target (or ``None``) and the
    training time. ``status`` is ``"ok"`` or ``"error"`` (with ``error``) when the mechanism cannot be
    built or training fails, so one mechanism never aborts a comparison.

    Raises:
        ValueError: ``data`` has no validation split (``data.val`` is ``None``).
    """
    if data.val is None:
        raise ValueError(f"data.val: task data {data.name!r} has no validation split to choose on")
    budget = budget or preset.budget
    card = attnzoo.card(mechanism)
    result: dict[str, Any] = {
        "mechanism": card.name,
        "family": card.family,
        "seed": seed,
        "overrides": dict(overrides or {}),
        "budget": {k: getattr(budget, k) for k in budget.__dataclass_fields__},
    }
    torch.manual_seed(seed)
    try:
        model, backbone = build_model(data, preset, card.name, overrides)
    except ValueError as exc:
        return {**result, "status": "error", "error": str(exc)}
    result["backbone"] = backbone
    result["params"] = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": budget.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=budget.lr,
    )
    gen = torch.Generator().manual_seed(seed)
    n_train = data.size("train")
    history: list[dict[str, Any]] = []
    reached: int | None = None
    start = time.perf_counter()
    bar = tqdm(total=budget.steps, desc=f"{data.name}:{card.name}", disable=not progress, leave=False)
    model.train()
    running = 0.0
    order = torch.randperm(n_train, generator=gen)
    cursor = 0
    try:
        for step in range(budget.steps):
            if cursor + budget.batch_size > n_train:
                order = torch.randperm(n_train, generator=gen)
                cursor = 0
            idx = order[cursor : cursor + budget.batch_size]
            cursor += budget.batch_size
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, budget)
            loss, _, _ = _loss_and_correct(model, data.kind, _batch(data.train, idx))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            running = loss.item() if step == 0 else 0.9 * running + 0.1 * loss.item()
            bar.update(1)
            done = step + 1
            if done % budget.eval_every == 0 or done == budget.steps:
                val_loss, val_acc = measure(model, data, "val")
                history.append(
                    {
                        "step": done,
                        "loss": running,
                        "val_loss": val_loss,
                        "val_accuracy": val_acc,
                        "test_accuracy": evaluate(model, data),
                        "seconds": time.perf_counter() - start,
                    }
                )
                bar.set_postfix(loss=f"{running:.3f}", val=f"{val_acc:.3f}")
                if budget.target is not None and val_acc >= budget.target:
                    reached = done
                    break
    except (RuntimeError, ValueError, FloatingPointError) as exc:
        bar.close()
        return {**result, "status": "error", "error": f"{type(exc).__name__}: {exc}", "history": history}
    bar.close()
    chosen = _checkpoint(history)
    return {
        **result,
        "status": "ok",
        "history": history,
        "steps_run": history[-1]["step"],
        "selected_step": chosen["step"],
        "val_accuracy": chosen["val_accuracy"],
        "val_loss": chosen["val_loss"],
        "test_accuracy": chosen["test_accuracy"],
        "final_val_accuracy": history[-1]["val_accuracy"],
        "final_accuracy": history[-1]["test_accuracy"],
        "target_reached_at": reached,
        "train_seconds": time.perf_counter() - start,
    }


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _checkpoint(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The evaluation a run reports: highest validation accuracy, then lowest validation loss, then
    the earliest step (test accuracy plays no part)."""
    return max(history, key=lambda h: (h["val_accuracy"], -_finite(h["val_loss"]), -h["step"]))


def run_eval(
    task: str,
    mechanisms: Sequence[str],
    *,
    preset: str | None = None,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    lr: float | None = None,
    lrs: Sequence[float] | None = None,
    target: float | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    model: Mapping[str, Any] | None = None,
    progress: bool = True,
    jobs: int = 1,
    latency: bool = False,
    journal: str | Path | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Evaluate ``mechanisms`` on ``task`` and return the result document.

    Args:
        task: task name (see :func:`attnzoo.tasks.list_tasks`).
        mechanisms: registered mechanism names; those the task's backbone cannot host are not
            trained and are listed, with the reason, in ``task["refused"]`` (as is every other
            mechanism of the task's families that it cannot host).
        preset: preset name (default: the task's default).
        seeds: one run per seed and mechanism; the data of a seed is shared by all mechanisms. Ints
            in ``[0, 1_000_003)`` (:func:`attnzoo.tasks.make.check_seed`).
        steps / lr / target: replace the preset's budget values for every mechanism alike; ``lr``
            also turns off the preset's learning-rate sweep.
        lrs: learning rates to sweep (replacing the preset's ``lrs``): every (mechanism, seed)
            is trained once per rate and the report keeps its run of best validation accuracy.
            ``()`` turns the sweep off.
        overrides: per-mechanism constructor kwargs, ``{name: {kwarg: value}}``.
        model: backbone settings replacing the preset's (see :data:`MODEL_KEYS`), the same for
            every mechanism, e.g. ``{"short_conv": 3}``.
        progress: show tqdm progress bars.
        jobs: runs trained at once, each in its own worker process with
            ``max(1, torch.get_num_threads() // jobs)`` threads (recorded in ``meta``); a run's
            result does not depend on ``jobs`` beyond that thread count. ``1`` trains in this process.
        latency: after training, time each mechanism's backbone (:func:`model_latency`, one
            training-sized batch of test data, all of this process's threads, one mechanism at a
            time) for the report's accuracy-vs-latency plot.
        journal: a ``runs.jsonl`` file (:class:`attnzoo.tasks.jobs.Journal`): every finished run is
            appended to it, and runs it already holds are not trained again (resume); it must have
            been started by the same configuration (task, preset, backbone, budget, threads,
            selection split).
        backend: where the runs train (:class:`attnzoo.tasks.jobs.Backend`, e.g.
            :class:`attnzoo.distributed.ray_backend.RayBackend`), each with the threads ``jobs``
            gives; a run's result is the same on every backend. ``None``: this machine, as ``jobs``
            says. Recorded in ``meta``.

    Returns:
        ``{"meta": {...}, "task": {...}, "runs": [result, ...]}`` where ``meta`` records the
        versions, the machine, the threads and the date, and ``task`` the selection split
        (``"selection": "validation"``), the mechanisms refused with their reasons, the preset and data
        configuration, so a run can be repeated; with ``latency``, also ``"latency": {"batch_size",
        "seq_len", "threads", "fwd_ms": {mechanism: timing}}``.
    """
    spec = get_task(task)
    preset_name = preset or spec.default_preset
    p = spec.preset(preset_name)
    budget = p.budget
    changes: dict[str, Any] = {}
    if steps is not None:
        changes["steps"] = steps
    if lr is not None:
        changes["lr"] = lr
    if target is not None:
        changes["target"] = target
    budget = replace(budget, **changes)
    if lr is not None and lrs:
        raise ValueError("give lr (one learning rate) or lrs (a sweep), not both")
    sweep = tuple(lrs) if lrs is not None else (() if lr is not None else p.lrs)
    check_lrs(sweep)
    budgets = [replace(budget, lr=x) for x in sweep] if sweep else [budget]
    model = dict(model or {})
    unknown = set(model) - MODEL_KEYS[spec.kind]
    if unknown:
        raise ValueError(
            f"unknown backbone setting(s) {sorted(unknown)} for a {spec.kind} task; "
            f"known: {sorted(MODEL_KEYS[spec.kind])}"
        )
    p = replace(p, model={**p.model, **model})
    asked = [attnzoo.card(m).name for m in mechanisms]
    if not asked:
        raise ValueError("mechanisms must name at least one mechanism")
    for seed in seeds:
        check_seed(seed)
    refused = task_refusals(spec.kind, spec.families, asked)
    names = [n for n in asked if n not in refused]
    overrides = {attnzoo.card(k).name: dict(v) for k, v in (overrides or {}).items()}
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    threads = torch.get_num_threads() if jobs == 1 else max(1, torch.get_num_threads() // jobs)
    data = spec.generate(preset_name, seed=seeds[0]) if seeds else None
    todo = [
        Job(name, seed, run_budget, overrides.get(name, {}))
        for seed in seeds
        for name in names
        for run_budget in budgets
    ]
    config = {
        "task": spec.name,
        "preset": preset_name,
        "model": p.model,
        "budget": {k: getattr(budget, k) for k in budget.__dataclass_fields__ if k != "lr"},
        "threads": threads,
        "selection": SELECTION,
    }
    runs = execute(
        spec.name,
        preset_name,
        p,
        todo,
        train_one,
        workers=jobs,
        threads=threads,
        journal=Journal(journal, config) if journal is not None else None,
        progress=progress,
        backend=backend,
    )
    data_cfg = data.config if data is not None else {}
    meta_cfg = data.meta if data is not None else {}
    doc: dict[str, Any] = {
        "meta": {
            "attnzoo": attnzoo.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": threads,
            "jobs": jobs,
            "backend": "local" if backend is None else backend.name,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "task": {
            "name": spec.name,
            "kind": spec.kind,
            "summary": spec.summary,
            "preset": preset_name,
            "data": {k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()},
            "model": {k: list(v) if isinstance(v, tuple) else v for k, v in p.model.items()},
            "model_overrides": model,
            "budget": {k: getattr(budget, k) for k in budget.__dataclass_fields__},
            "lrs": list(sweep),
            "seq_len": meta_cfg.get("seq_len"),
            "chance": meta_cfg.get("chance"),
            "seeds": list(seeds),
            "selection": SELECTION,
            "mechanisms": asked,
            "refused": refused,
        },
        "runs": runs,
    }
    if latency and data is not None:
        doc["latency"] = {
            "batch_size": budget.batch_size,
            "seq_len": meta_cfg.get("seq_len") if spec.kind == "sequence" else None,
            "threads": torch.get_num_threads(),
            "fwd_ms": {
                name: model_latency(data, p, name, overrides.get(name), batch_size=budget.batch_size)
                for name in tqdm(names, desc=f"{spec.name}: latency", disable=not progress)
                if any(r["mechanism"] == name and r["status"] == "ok" for r in runs)
            },
        }
    return doc
