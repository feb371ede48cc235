"""Which run of a learning-rate sweep a report keeps, on which split, and the sweep itself.

Documents written by :func:`attnzoo.tasks.run_eval` choose on the **validation** split: each run
reports its checkpoint of best validation accuracy (:func:`attnzoo.tasks.runner.train_one`), and
each (mechanism, seed) keeps the learning rate whose checkpoint has the best validation accuracy
(ties: lower validation loss, then the lower learning rate); the test accuracy of that checkpoint is
the reported number. Older documents (before the tasks had validation splits, e.g. the committed
``reports/eval/mqar/results.json`` of December 2026) chose the learning rate and the checkpoint by
test accuracy (ties: the earlier step reaching the target); they still render, and say so.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["reported_accuracy", "selected_runs", "selection_note", "selection_split", "sweep_table"]

_SPLITS = ("validation", "test")


def selection_split(doc: dict[str, Any]) -> str:
    """``"validation"`` or ``"test"``: the split that chose the learning rates (and checkpoints) of
    the results document ``doc``. Documents that do not record it (``task["selection"]``) predate
    the validation splits and chose on test, unless their runs carry validation numbers."""
    recorded = doc.get("task", {}).get("selection")
    if recorded is not None:
        if recorded not in _SPLITS:
            raise ValueError(f"task.selection must be one of {_SPLITS}, got {recorded!r}")
        return recorded
    with_val = any("val_accuracy" in r for r in doc.get("runs", []) if r.get("status") == "ok")
    return "validation" if with_val else "test"


def reported_accuracy(run: dict[str, Any], split: str) -> float:
    """The test accuracy a successful run reports: that of its validation-chosen checkpoint
    (``split == "validation"``), or its best test accuracy in an older document (``"test"``)."""
    return run["test_accuracy"] if split == "validation" else run["best_accuracy"]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _rank(run: dict[str, Any], split: str) -> tuple[float, ...]:
    if split == "validation":
        return run["val_accuracy"], -_finite(run["val_loss"]), -run["budget"]["lr"]
    reached = run["target_reached_at"]
    return run["best_accuracy"], -(reached if reached is not None else math.inf)


def _groups(doc: dict[str, Any]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in doc["runs"]:
        groups.setdefault((run["mechanism"], run["seed"]), []).append(run)
    return groups


def selected_runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs a report shows: per (mechanism, seed), in run order, the one its learning-rate sweep
    chose on :func:`selection_split`'s split when any run succeeded, otherwise its failed runs.
    Without a sweep this is every run."""
    split = selection_split(doc)
    out = []
    for runs in _groups(doc).values():
        ok = [r for r in runs if r["status"] == "ok"]
        out += [max(ok, key=lambda r: _rank(r, split))] if ok else runs
    return out


def selection_note(doc: dict[str, Any]) -> str:
    """One Markdown sentence saying which split chose the learning rates and checkpoints, and how
    ties break."""
    if selection_split(doc) == "validation":
        return (
            "**Learning rates and checkpoints chosen on the validation split**; the test split only "
            "scores the choice. Each run reports its evaluation of best validation accuracy (ties: lower "
            "validation loss, then the earlier step) and stops early once validation accuracy reaches "
            "the target; each (mechanism, seed) keeps the learning rate of best validation accuracy "
            "(ties: lower validation loss, then the lower rate); the test accuracy of that evaluation "
            "is the number shown."
        )
    return (
        "**Learning rates chosen on the test split (older protocol)**: this document predates the "
        "validation splits, so each (mechanism, seed)'s learning rate and checkpoint are those of best "
        "test accuracy (ties: the earlier step reaching the target), and early stopping watched test "
        "accuracy; its numbers are optimistic. Re-running its command chooses on validation."
    )


def _cell(run: dict[str, Any], split: str, chosen: bool) -> str:
    if run["status"] != "ok":
        return "failed"
    if split == "validation":
        text = f"{run['val_accuracy']:.3f} / {run['test_accuracy']:.3f} @ {run['selected_step']}"
    else:
        text = f"{run['best_accuracy']:.3f} ({run['steps_run']} steps)"
    return f"**{text}**" if chosen else text


def sweep_table(doc: dict[str, Any]) -> str:
    """The whole sweep in Markdown: one row per (mechanism, seed), one column per learning rate,
    each cell the run's validation / test accuracy at its chosen step (older documents: its best
    test accuracy and the steps it ran), the chosen run in bold."""
    split = selection_split(doc)
    rates = list(doc["task"].get("lrs") or [])
    for run in doc["runs"]:
        if run["budget"]["lr"] not in rates:
            rates.append(run["budget"]["lr"])
    chosen = {id(r) for r in selected_runs(doc)}
    what = "val / test acc @ step" if split == "validation" else "best test acc (steps run)"
    cols = ["mechanism", "seed", *(f"lr {lr:g}: {what}" for lr in rates)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for (name, seed), runs in _groups(doc).items():
        by_lr = {r["budget"]["lr"]: r for r in runs}
        cells = [_cell(by_lr[lr], split, id(by_lr[lr]) in chosen) if lr in by_lr else "–" for lr in rates]
        lines.append("| " + " | ".join([f"`{name}`", str(seed), *cells]) + " |")
    return "\n".join(lines)
