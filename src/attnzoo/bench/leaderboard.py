"""One leaderboard: per family, the quality of the committed eval results beside latency, memory and
FLOPs at equal width, with a Pareto plot (quality against latency) per family.

Cost: every mechanism of a family at the family's width (:func:`attnzoo.bench.measure.at_equal_width`)
and the same token counts N. Parameters, FLOPs and peak memory come from one fresh process per
mechanism (:func:`attnzoo.bench.runner.run_benchmarks`); latency from one fresh process per family
that times its mechanisms interleaved with a 2048-square fp32 GEMM (:mod:`attnzoo.bench.interleave`),
so FLOP rates read as a share of that GEMM's. Quality: every ``reports/eval/<task>/results.json``,
read as committed; a mechanism without a result for a task of its family says so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import attnzoo
from attnzoo.bench.interleave import Contender, run_interleaved
from attnzoo.bench.measure import at_equal_width, bench_variants, cost_model
from attnzoo.bench.runner import BenchConfig, run_benchmarks
from attnzoo.registry import FAMILIES, UnknownMechanismError

__all__ = [
    "GEMM_N",
    "LEADERBOARD_PRESETS",
    "PRODUCED",
    "REFERENCE_N",
    "family_tasks",
    "flops_cell",
    "load_quality",
    "measure_costs",
    "quality_cell",
    "quality_of",
    "reference_row",
]

_SIZES = {
    "full": ((256, 1024, 4096), ((16, 16), (32, 32), (64, 64)), ((8, 8, 4), (16, 16, 4), (16, 16, 16))),
    "quick": ((256, 1024), ((16, 16), (32, 32)), ((8, 8, 4), (16, 16, 4))),
}
LEADERBOARD_PRESETS: dict[str, BenchConfig] = {
    name: BenchConfig(
        preset=f"leaderboard-{name}",
        seq_sizes=seq,
        grid_sizes=grid,
        volume_sizes=vol,
        threads=1,
        warmup=1,
        repeats=5,
        budget_s=0.5 if name == "full" else 0.2,
        max_ms=2000.0 if name == "full" else 1000.0,
        timeout_s=180.0 if name == "full" else 60.0,
        equal_width=True,
    )
    for name, (seq, grid, vol) in _SIZES.items()
}
"""Cost sweeps of ``attnzoo report --full`` / ``--quick``: N = 256, 1024 (and 4096) tokens for
sequences, grids and volumes alike, forward only, equal width, one thread."""
REFERENCE_N = 1024
"""The token count whose latency, memory and FLOPs the leaderboard tables and Pareto plots use."""
GEMM_N = 2048
PRODUCED = (
    "leaderboard.md",
    "leaderboard.json",
    *(f"leaderboard_{kind}_{family}.png" for family in FAMILIES for kind in ("pareto", "cost")),
)
"""Every file name a leaderboard write can produce (``--out`` removes the ones it no longer writes)."""


def _variants(names: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (name, f"{name}[{label}]" if label else name, at_equal_width(name, kwargs, label))
        for name in names
        for label, kwargs in bench_variants(name).items()
    ]


def measure_costs(
    names: list[str], config: BenchConfig, *, progress: bool = True, gemm_n: int = GEMM_N
) -> dict[str, Any]:
    """The cost document of ``names`` under ``config`` (``equal_width`` is forced on): the bench
    document of :func:`~attnzoo.bench.runner.run_benchmarks`, each ``ok`` size row given the
    family's interleaved timing (``"interleaved"``: min, median, runs; ``"pct_gemm_peak"``: its
    FLOPs per second at the minimum over the run's peak, the fastest GEMM of all rounds), and
    ``doc["interleaved"][family]`` with each round's GEMM rate, load and errors."""
    config = dataclasses.replace(config, equal_width=True)
    started = time.monotonic()
    load_before = list(os.getloadavg())
    doc = run_benchmarks(names, config, progress=progress)
    by_name = {r["name"]: r for r in doc["results"]}
    doc["interleaved"] = {}
    for family in FAMILIES:
        contenders: list[Contender] = []
        for name, label, kwargs in _variants([n for n in names if attnzoo.card(n).family == family]):
            rows = by_name[label]["sizes"]
            contenders.append(
                (name, label, kwargs, [r["size"] if r["status"] == "ok" else None for r in rows])
            )
        if not contenders:
            continue
        if progress:
            print(f"interleaved: {family} ({len(contenders)} configurations)", flush=True)
        timing = run_interleaved(
            contenders, config, gemm_n=gemm_n, timeout_s=max(300.0, 6 * config.timeout_s)
        )
        doc["interleaved"][family] = timing
        for rnd in timing["rounds"]:
            for label, t in rnd["timings"].items():
                by_name[label]["sizes"][rnd["round"]]["interleaved"] = t
    rates = [r["gemm"]["gflops"] for t in doc["interleaved"].values() for r in t["rounds"]]
    peak = max(rates, default=0.0) * 1e9
    for res in doc["results"]:
        for row in res["sizes"]:
            if "interleaved" in row:
                flops = _flops(res, row)[0]
                row["pct_gemm_peak"] = (
                    None if flops is None else 100 * flops / (row["interleaved"]["min"] * 1e-3) / peak
                )
    doc["meta"]["gemm_peak_gflops"] = peak / 1e9
    doc["meta"]["gemm_n"] = gemm_n
    doc["meta"]["load_average_before"] = load_before
    doc["meta"]["load_average_after"] = list(os.getloadavg())
    doc["meta"]["seconds"] = time.monotonic() - started
    doc["meta"]["reference_n"] = REFERENCE_N
    return doc


def _flops(res: dict[str, Any], row: dict[str, Any]) -> tuple[float | None, str]:
    """Forward FLOPs of ``row`` and their source: ``"counted"`` (FlopCounterMode), ``"formula"``
    (the card's ``bench["cost_model"]`` "model FLOPs", used when nothing was counted) or
    ``"uncounted"`` (the counter saw no FLOPs and the card declares no formula)."""
    if row.get("flops_fwd"):
        return float(row["flops_fwd"]), "counted"
    try:
        model = cost_model(res["mechanism"])
    except UnknownMechanismError:
        model = None
    if model is not None:
        value = model(res["config"], row["n"], row["batch"]).get("model FLOPs")
        if value is not None:
            return float(value), "formula"
    return None, "uncounted"


def flops_cell(res: dict[str, Any], row: dict[str, Any] | None) -> str:
    """A FLOPs cell that never reads 0 for uncounted work: the count, the card formula's value
    marked as such, or *not counted* naming why."""
    if row is None or row.get("status") != "ok":
        return "–" if row is None else row["status"]
    value, source = _flops(res, row)
    if value is None:
        return "not counted (elementwise; no card formula)"
    text = _si(value)
    return text if source == "counted" else f"{text} (card formula)"


def _si(value: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


def reference_row(res: dict[str, Any], n: int = REFERENCE_N) -> dict[str, Any] | None:
    """The size row of ``res`` with an interleaved timing whose N is closest to ``n`` (log scale),
    else its first row (whose status says why nothing was timed)."""
    timed = [r for r in res["sizes"] if r.get("status") == "ok" and "interleaved" in r]
    if timed:
        return min(timed, key=lambda r: abs(math.log(r["n"]) - math.log(n)))
    return res["sizes"][0] if res["sizes"] else None


def load_quality(root: Path) -> list[dict[str, Any]]:
    """Every committed ``<root>/<task>/results.json`` as ``{task, preset, path, command, date,
    families, chance, selection, metric, refused, rows: {mechanism: summary row}}``, sorted by task;
    the families are the task's catalog families (:data:`attnzoo.tasks.catalog.TASKS`), else its rows'."""
    from attnzoo.tasks.catalog import TASKS
    from attnzoo.tasks.report import refusals, repeat_command, selection_split, summarise

    out = []
    for path in sorted(Path(root).glob("*/results.json")):
        doc = json.loads(path.read_text())
        rows = doc.get("summary") or summarise(doc)
        task = doc["task"]
        spec = TASKS.get(task["name"])
        families = list(spec.families) if spec else sorted({r["family"] for r in rows})
        selection = selection_split(doc)
        out.append(
            {
                "task": task["name"],
                "preset": task.get("preset", "–"),
                "path": str(path),
                "command": repeat_command(doc),
                "date": doc.get("meta", {}).get("date", "–"),
                "families": families,
                "chance": task.get("chance"),
                "seq_len": task.get("seq_len"),
                "selection": selection,
                "metric": "test accuracy, learning rate chosen on validation"
                if selection == "validation"
                else "best test accuracy, learning rate chosen on test (older protocol)",
                "refused": refusals(doc)[0],
                "rows": {r["mechanism"]: r for r in rows},
            }
        )
    return out


def family_tasks(quality: list[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """The committed tasks that evaluate ``family`` (by catalog, or because a row is of it), those
    scoring most of its mechanisms first."""
    tasks = [
        q
        for q in quality
        if family in q["families"] or any(r["family"] == family for r in q["rows"].values())
    ]
    return sorted(tasks, key=lambda q: -sum(r["family"] == family for r in q["rows"].values()))


def quality_of(task: dict[str, Any], res: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The summary row of ``res`` in ``task`` (by its benchmarked name, else its mechanism's) and
    how it matched: ``"name"``, ``"mechanism"`` (a variant scored at the card's configuration) or
    ``""`` (not evaluated)."""
    if res["name"] in task["rows"]:
        return task["rows"][res["name"]], "name"
    if res["mechanism"] in task["rows"]:
        return task["rows"][res["mechanism"]], "mechanism"
    return None, ""


def quality_cell(task: dict[str, Any], res: dict[str, Any]) -> str:
    """Mean ± spread over seeds of the reported test accuracy (``task["metric"]`` says which), or
    why there is none: the task's backbone cannot host the mechanism, or no committed result."""
    row, how = quality_of(task, res)
    if row is None:
        refused = task.get("refused", {}).get(res["mechanism"])
        return f"cannot run: {refused}" if refused else "not evaluated (no committed result)"
    if not row.get("ok"):
        error = (row.get("errors") or ["no run finished"])[0].splitlines()[0][:80]
        return f"failed: {error}"
    cell = f"{row['test_accuracy']:.3f} ± {row['test_accuracy_std']:.3f} ({row['ok']} seeds)"
    return cell + (" (card config)" if how == "mechanism" else "")
