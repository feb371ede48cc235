"""Turn an evaluation document (:func:`attnzoo.tasks.run_eval`) into a JSON file, a Markdown
report with a README-ready table, and plots: accuracy over training, and accuracy against forward
latency (a Pareto plot). The latency is that of the backbone as trained, timed by ``run_eval(latency=True)``
(``attnzoo eval --latency``), or, when a ``bench.json`` is given, the benchmark's figure for the
mechanism's card configuration. Every report says which split chose its learning rates
(:func:`selection_split`), shows the whole sweep, and lists the mechanisms that cannot run the task
with the reason (:func:`refusals`)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from attnzoo.tasks.report_plots import pareto_front, plot_curves, plot_pareto
from attnzoo.tasks.selection import (
    reported_accuracy,
    selected_runs,
    selection_note,
    selection_split,
    sweep_table,
)

__all__ = [
    "PRODUCED",
    "bench_latency",
    "markdown_table",
    "pareto_front",
    "refusals",
    "repeat_command",
    "selected_runs",
    "selection_split",
    "summarise",
    "write_results",
]


def bench_latency(bench: dict[str, Any], name: str, n: int | None) -> tuple[float, int] | None:
    """Forward latency median (ms) of ``name`` in a ``bench.json`` document at the measured size
    whose token count is closest to ``n`` (in log scale), with that size's ``n``; ``None`` when
    the mechanism was not measured or no size finished."""
    for res in bench.get("results", []):
        if res.get("name") != name:
            continue
        rows = [s for s in res.get("sizes", []) if s.get("status") == "ok" and "fwd_ms" in s]
        if not rows:
            return None
        target = max(1, n or 1)
        best = min(rows, key=lambda s: abs(math.log(max(1, s["n"])) - math.log(target)))
        return float(best["fwd_ms"]["median"]), int(best["n"])
    return None


def summarise(doc: dict[str, Any], bench: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per mechanism (in run order), aggregated over seeds after picking each seed's
    learning rate on :func:`selection_split`'s split (:func:`selected_runs`): the split
    (``selection``), the mean reported test accuracy (``test_accuracy``: of each chosen run's
    validation-chosen checkpoint; in older documents its best test accuracy), its spread and worst
    seed, the mean validation accuracy of the chosen checkpoints (``None`` in older documents), the
    mean final test accuracy, the chosen learning rates, runs reaching the target, median steps to
    the target, params, train time (of the chosen runs) and, when the report has latencies (a
    ``bench``, or the document's own from ``run_eval(latency=True)``; see :func:`_latency_source`),
    the forward latency. ``best_accuracy`` / ``best_accuracy_std`` / ``worst_accuracy`` repeat the
    reported test accuracy under the names the leaderboard reads."""
    split = selection_split(doc)
    order: list[str] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in selected_runs(doc):
        name = run["mechanism"]
        if name not in groups:
            order.append(name)
            groups[name] = []
        groups[name].append(run)
    failed_sweep_runs: dict[str, int] = {}
    for run in doc["runs"]:
        if run["status"] != "ok":
            failed_sweep_runs[run["mechanism"]] = failed_sweep_runs.get(run["mechanism"], 0) + 1
    rows = []
    seq_len = doc["task"].get("seq_len")
    source = _latency_source(doc, bench)
    for name in order:
        runs = groups[name]
        ok = [r for r in runs if r["status"] == "ok"]
        row: dict[str, Any] = {
            "mechanism": name,
            "family": runs[0]["family"],
            "backbone": ok[0]["backbone"] if ok else runs[0].get("backbone", "–"),
            "selection": split,
            "runs": len({r["seed"] for r in runs}),
            "ok": len(ok),
            "errors": [r["error"] for r in runs if r["status"] != "ok"],
            "failed_runs": failed_sweep_runs.get(name, 0),
        }
        if ok:
            test = [reported_accuracy(r, split) for r in ok]
            hits = [r["target_reached_at"] for r in ok if r["target_reached_at"] is not None]
            row.update(
                params=ok[0]["params"],
                test_accuracy=statistics.fmean(test),
                test_accuracy_std=statistics.pstdev(test) if len(test) > 1 else 0.0,
                worst_test_accuracy=min(test),
                val_accuracy=(
                    statistics.fmean(r["val_accuracy"] for r in ok) if split == "validation" else None
                ),
                final_accuracy=statistics.fmean(r["final_accuracy"] for r in ok),
                lrs=[r["budget"]["lr"] for r in ok],
                reached=len(hits),
                steps_to_target=statistics.median(hits) if hits else None,
                train_seconds=statistics.fmean(r["train_seconds"] for r in ok),
            )
            row.update(
                best_accuracy=row["test_accuracy"],
                best_accuracy_std=row["test_accuracy_std"],
                worst_accuracy=row["worst_test_accuracy"],
            )
        if source == "bench":
            lat = bench_latency(bench, name, seq_len)
            row["fwd_ms"], row["bench_n"] = lat if lat else (None, None)
        elif source == "model":
            timing = doc["latency"]["fwd_ms"].get(name)
            row["fwd_ms"] = None if timing is None else float(timing["median"])
            row["bench_n"] = doc["latency"]["seq_len"]
        rows.append(row)
    return rows


def refusals(doc: dict[str, Any]) -> tuple[dict[str, str], bool]:
    """``({mechanism: why the task's backbone cannot host it}, recorded)``: the document's own list
    (``recorded``), or, for a document that predates it, the list the current registry gives for the
    task's families and the mechanisms it ran."""
    task = doc["task"]
    if "refused" in task:
        return dict(task["refused"]), True
    from attnzoo.tasks.backbones import task_refusals
    from attnzoo.tasks.catalog import TASKS

    spec = TASKS.get(task["name"])
    families = spec.families if spec else sorted({r["family"] for r in doc["runs"]})
    kind = task.get("kind") or (spec.kind if spec else "sequence")
    return task_refusals(kind, families, [r["mechanism"] for r in doc["runs"]]), False


def _latency_source(doc: dict[str, Any], bench: dict[str, Any] | None) -> str | None:
    """Where a report's latencies come from: ``"bench"`` (a given ``bench.json``), ``"model"``
    (the backbones as trained, timed by ``run_eval(latency=True)``) or ``None``."""
    if bench is not None:
        return "bench"
    return "model" if "latency" in doc else None


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(doc: dict[str, Any], bench: dict[str, Any] | None = None) -> str:
    """The README-ready Markdown table of :func:`summarise`.

    "test acc" is the reported test accuracy (older documents: "best test acc"), with several seeds
    the mean ± spread over seeds, and "worst seed" the lowest; "val acc" the mean validation
    accuracy of the chosen checkpoints; with a learning-rate sweep, "lr" lists each seed's chosen
    rate and the column header names the split that chose it.
    """
    rows = summarise(doc, bench)
    split = selection_split(doc)
    target = doc["task"]["budget"].get("target")
    seeds = len(doc["task"].get("seeds", [])) > 1
    sweep = bool(doc["task"].get("lrs"))
    acc = "test acc" if split == "validation" else "best test acc"
    cols = ["mechanism", "family", "backbone", "params", acc]
    if seeds:
        cols.append("worst seed")
    if split == "validation":
        cols.append("val acc")
    cols.append("final test acc")
    if sweep:
        cols.append(f"lr (per seed, chosen on {split})")
    if target is not None:
        on = "val" if split == "validation" else "test"
        cols.append(f"reached {target:g} on {on} (runs, median step)")
    cols.append("train s")
    source = _latency_source(doc, bench)
    if source == "bench":
        cols.append("fwd ms (bench, N)")
    elif source == "model":
        cols.append(f"fwd ms (model, batch {doc['latency']['batch_size']})")
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        if not r["ok"]:
            cells = [f"`{r['mechanism']}`", r["family"], r["backbone"], "–", "error"]
            cells += ["–"] * (len(cols) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        acc = _f(r["test_accuracy"])
        if r["runs"] > 1:
            acc += f" ± {r['test_accuracy_std']:.3f}"
        cells = [f"`{r['mechanism']}`", r["family"], r["backbone"], f"{r['params']:,}", acc]
        if seeds:
            cells.append(_f(r["worst_test_accuracy"]))
        if split == "validation":
            cells.append(_f(r["val_accuracy"]))
        cells.append(_f(r["final_accuracy"]))
        if sweep:
            cells.append(", ".join(f"{lr:g}" for lr in r["lrs"]))
        if target is not None:
            step = "–" if r["steps_to_target"] is None else f"{r['steps_to_target']:g}"
            cells.append(f"{r['reached']}/{r['ok']}, {step}")
        cells.append(f"{r['train_seconds']:.1f}")
        if source == "bench":
            cells.append("–" if r["fwd_ms"] is None else f"{r['fwd_ms']:.3f} @ {r['bench_n']}")
        elif source == "model":
            cells.append(_f(r["fwd_ms"], 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def repeat_command(doc: dict[str, Any]) -> str:
    """The ``attnzoo eval`` command line that repeats the run recorded in ``doc``."""
    t = doc["task"]
    budget = t["budget"]
    names: list[str] = list(t.get("mechanisms", []))
    kwargs: dict[str, dict[str, Any]] = {}
    for run in doc["runs"]:
        if run["mechanism"] not in names:
            names.append(run["mechanism"])
        if run.get("overrides"):
            kwargs[run["mechanism"]] = run["overrides"]
    parts = [
        f"attnzoo eval {t['name']} --preset {t['preset']} --mechanisms {','.join(names)}",
        f"--seeds {','.join(str(s) for s in t['seeds'])}",
    ]
    if t.get("lrs"):
        parts.append(f"--steps {budget['steps']} --lrs {','.join(f'{lr:g}' for lr in t['lrs'])}")
    elif "steps" in budget and "lr" in budget:
        parts.append(f"--steps {budget['steps']} --lr {budget['lr']:g}")
    if budget.get("target") is not None:
        parts.append(f"--target {budget['target']:g}")
    if "latency" in doc:
        parts.append("--latency")
    if t.get("model_overrides"):
        parts.append(f"--model-kwargs '{json.dumps(t['model_overrides'])}'")
    parts += [f"--mechanism-kwargs '{name}:{json.dumps(kw)}'" for name, kw in kwargs.items()]
    return " ".join(parts)


PRODUCED = ("results.json", "report.md", "accuracy.png", "pareto.png", "runs.jsonl")
"""Every file name an eval writes into its folder (``runs.jsonl`` is the journal of a run in progress)."""


def write_results(doc: dict[str, Any], out_dir: Path, bench: dict[str, Any] | None = None) -> list[Path]:
    """Write ``results.json``, ``report.md``, ``accuracy.png`` and (with ``bench``) ``pareto.png``
    into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rows = summarise(doc, bench)
    split = selection_split(doc)
    results = out_dir / "results.json"
    task = {**doc["task"], "selection": split}
    results.write_text(json.dumps({**doc, "task": task, "summary": rows}, indent=1))
    written.append(results)
    curves = out_dir / "accuracy.png"
    plot_curves(doc, curves)
    written.append(curves)
    front: list[str] = []
    source = _latency_source(doc, bench)
    if source is not None:
        pareto = out_dir / "pareto.png"
        front = plot_pareto(doc, rows, pareto, source)
        written.append(pareto)
    t = doc["task"]
    m = doc["meta"]
    lines = [
        f"# attnzoo eval: {t['name']} ({t['preset']})",
        "",
        f"{t['summary']}.",
        "",
        selection_note(doc),
        "",
        markdown_table(doc, bench),
        "",
        f"- selection split: {split}",
        f"- data: `{json.dumps(t['data'])}`; chance accuracy {_f(t.get('chance'))}",
        f"- backbone: `{json.dumps(t['model'])}`",
        f"- budget (the same for every mechanism): `{json.dumps(t['budget'])}`",
        *(
            [
                f"- learning rates swept for every mechanism and seed: {t['lrs']}; each (mechanism, seed) "
                f"shows the run its {split} accuracy chose (Zoology's sweep); the plot shows those runs, "
                "the sweep table below every run"
            ]
            if t.get("lrs")
            else []
        ),
        f"- seeds: {t['seeds']}; torch {m['torch']}, {m['threads']} thread(s), {m['date']}",
        f"- repeat with: `{repeat_command(doc)}`",
    ]
    if source == "bench":
        lines.append(
            "- latency: `attnzoo bench` forward median of each mechanism's card configuration at the "
            "measured size closest to the task's sequence length (not of the trained model)"
        )
    elif source == "model":
        lat = doc["latency"]
        length = f" of length {lat['seq_len']}" if lat.get("seq_len") else ""
        lines.append(
            "- latency: forward median (eval mode, no grad) of each backbone as trained (its "
            f"configuration, fresh weights) on one batch of {lat['batch_size']} test examples{length}, "
            f"{lat['threads']} thread(s), one mechanism at a time after training"
        )
    if source is not None:
        lines.append(f"- Pareto front (latency vs accuracy): {', '.join(front) or '–'}")
    failed = [(r["mechanism"], e) for r in rows for e in r["errors"]]
    if failed:
        lines += ["", "## Errors", ""] + [f"- `{n}`: {e}" for n, e in failed]
    swept = [
        f"- `{r['mechanism']}`: {r['failed_runs']} run(s) of the sweep failed"
        for r in rows
        if r["ok"] and r["failed_runs"]
    ]
    if swept:
        lines += ["", "## Failed sweep runs (not chosen)", "", *swept]
    lines += ["", "## Learning-rate sweep", "", sweep_table(doc)]
    refused, recorded = refusals(doc)
    if refused:
        origin = "" if recorded else " (from today's registry: this document predates the list)"
        lines += ["", "## Mechanisms that cannot run this task" + origin, ""]
        asked = set(t.get("mechanisms", []))
        lines += [f"- `{n}`{' (asked for)' if n in asked else ''}: {why}" for n, why in refused.items()]
    lines += ["", "![accuracy over training](accuracy.png)"]
    if source is not None:
        lines.append("![accuracy vs latency](pareto.png)")
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    written.append(report)
    return written
