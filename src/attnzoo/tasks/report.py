"""Turn an evaluation document (:func:`attnzoo.tasks.run_eval`) into a JSON file, a Markdown
report with a README-ready table, and plots: accuracy over training, and accuracy against forward
latency (a Pareto plot). The latency is that of the backbone as trained, timed by ``run_eval(latency=True)``
(``attnzoo eval --latency``), or, when a ``bench.json`` is given, the benchmark's figure for the
mechanism's card configuration."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

__all__ = [
    "PRODUCED",
    "bench_latency",
    "markdown_table",
    "pareto_front",
    "repeat_command",
    "selected_runs",
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


def _run_key(run: dict[str, Any]) -> tuple[float, float]:
    """Ranking of the runs of one (mechanism, seed): best accuracy, then the earlier target."""
    reached = run["target_reached_at"]
    return run["best_accuracy"], -(reached if reached is not None else math.inf)


def selected_runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs a report shows: per (mechanism, seed), in run order, the best of its learning-rate
    sweep (highest best accuracy, then the earliest step reaching the target) when any run
    succeeded, otherwise its failed runs. Without a sweep this is every run."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in doc["runs"]:
        groups.setdefault((run["mechanism"], run["seed"]), []).append(run)
    out = []
    for runs in groups.values():
        ok = [r for r in runs if r["status"] == "ok"]
        out += [max(ok, key=_run_key)] if ok else runs
    return out


def summarise(doc: dict[str, Any], bench: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per mechanism (in run order), aggregated over seeds after picking each seed's best
    learning rate (:func:`selected_runs`): mean best/final accuracy, their spread, the worst
    seed, the chosen learning rates, runs reaching the target, median steps to the target,
    params, train time (of the chosen runs) and, when the report has latencies (a ``bench``, or
    the document's own from ``run_eval(latency=True)``; see :func:`_latency_source`), the
    forward latency."""
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
            "runs": len({r["seed"] for r in runs}),
            "ok": len(ok),
            "errors": [r["error"] for r in runs if r["status"] != "ok"],
            "failed_runs": failed_sweep_runs.get(name, 0),
        }
        if ok:
            best = [r["best_accuracy"] for r in ok]
            row.update(
                params=ok[0]["params"],
                best_accuracy=statistics.fmean(best),
                best_accuracy_std=statistics.pstdev(best) if len(best) > 1 else 0.0,
                worst_accuracy=min(best),
                final_accuracy=statistics.fmean(r["final_accuracy"] for r in ok),
                lrs=[r["budget"]["lr"] for r in ok],
                reached=sum(r["target_reached_at"] is not None for r in ok),
                steps_to_target=(
                    statistics.median(
                        r["target_reached_at"] for r in ok if r["target_reached_at"] is not None
                    )
                    if any(r["target_reached_at"] is not None for r in ok)
                    else None
                ),
                train_seconds=statistics.fmean(r["train_seconds"] for r in ok),
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

    With several seeds, "best acc" is the mean ± spread over seeds and "worst seed" the lowest;
    with a learning-rate sweep, "lr" lists each seed's chosen rate.
    """
    rows = summarise(doc, bench)
    target = doc["task"]["budget"].get("target")
    seeds = len(doc["task"].get("seeds", [])) > 1
    sweep = bool(doc["task"].get("lrs"))
    cols = ["mechanism", "family", "backbone", "params", "best acc"]
    if seeds:
        cols.append("worst seed")
    cols.append("final acc")
    if sweep:
        cols.append("lr (per seed)")
    if target is not None:
        cols.append(f"reached {target:g} (runs, median step)")
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
        acc = _f(r["best_accuracy"])
        if r["runs"] > 1:
            acc += f" ± {r['best_accuracy_std']:.3f}"
        cells = [f"`{r['mechanism']}`", r["family"], r["backbone"], f"{r['params']:,}", acc]
        if seeds:
            cells.append(_f(r["worst_accuracy"]))
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


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the Pareto front of ``(name, latency, accuracy)``: no other point is at least as
    fast and at least as accurate while strictly better in one of the two."""
    front = []
    for name, lat, acc in points:
        dominated = any(
            (lo <= lat and ao >= acc) and (lo < lat or ao > acc) for n2, lo, ao in points if n2 != name
        )
        if not dominated:
            front.append(name)
    return front


def _plot_curves(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, Any] = {}
    for run in selected_runs(doc):
        if run["status"] != "ok":
            continue
        name = run["mechanism"]
        label = None if name in colours else name
        steps = [h["step"] for h in run["history"]]
        accs = [h["accuracy"] for h in run["history"]]
        (line,) = ax.plot(steps, accs, marker="o", ms=3, label=label, color=colours.get(name))
        colours.setdefault(name, line.get_color())
    target = doc["task"]["budget"].get("target")
    if target is not None:
        ax.axhline(target, color="grey", ls=":", lw=1)
    chance = doc["task"].get("chance")
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=0.8, label="chance")
    t = doc["task"]
    ax.set_title(f"{t['name']} ({t['preset']}): test accuracy over training")
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pareto(doc: dict[str, Any], rows: list[dict[str, Any]], path: Path, source: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    pts = [
        (r["mechanism"], r["fwd_ms"], r["best_accuracy"])
        for r in rows
        if r.get("ok") and r.get("fwd_ms") is not None
    ]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, lat, acc in pts:
        ax.scatter([lat], [acc], s=30, color="tab:red" if name in front else "tab:blue", zorder=3)
        ax.annotate(name, (lat, acc), fontsize=8, xytext=(4, 3), textcoords="offset points")
    line = sorted((lat, acc) for name, lat, acc in pts if name in front)
    if len(line) > 1:
        ax.plot(
            [p[0] for p in line], [p[1] for p in line], color="tab:red", lw=1, ls="--", label="Pareto front"
        )
        ax.legend(fontsize=8)
    t = doc["task"]
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    if source == "bench":
        n = t.get("seq_len")
        ax.set_xlabel(f"forward latency, ms (attnzoo bench, card config, size closest to N={n})")
    else:
        lat = doc["latency"]
        length = f" x N={lat['seq_len']}" if lat.get("seq_len") else ""
        ax.set_xlabel(
            f"forward latency, ms (backbone as trained, batch {lat['batch_size']}{length}, "
            f"{lat['threads']} thread(s))"
        )
    ax.set_ylabel("best test accuracy")
    ax.set_title(f"{t['name']} ({t['preset']}): quality vs cost")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return front


def repeat_command(doc: dict[str, Any]) -> str:
    """The ``attnzoo eval`` command line that repeats the run recorded in ``doc``."""
    t = doc["task"]
    budget = t["budget"]
    names: list[str] = []
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
    results = out_dir / "results.json"
    results.write_text(json.dumps({**doc, "summary": rows}, indent=1))
    written.append(results)
    curves = out_dir / "accuracy.png"
    _plot_curves(doc, curves)
    written.append(curves)
    front: list[str] = []
    source = _latency_source(doc, bench)
    if source is not None:
        pareto = out_dir / "pareto.png"
        front = _plot_pareto(doc, rows, pareto, source)
        written.append(pareto)
    t = doc["task"]
    m = doc["meta"]
    lines = [
        f"# attnzoo eval: {t['name']} ({t['preset']})",
        "",
        f"{t['summary']}.",
        "",
        markdown_table(doc, bench),
        "",
        f"- data: `{json.dumps(t['data'])}`; chance accuracy {_f(t.get('chance'))}",
        f"- backbone: `{json.dumps(t['model'])}`",
        f"- budget (the same for every mechanism): `{json.dumps(t['budget'])}`",
        *(
            [
                f"- learning rates swept for every mechanism and seed: {t['lrs']}; each (mechanism, seed) "
                "shows its best run (Zoology's protocol); the plot shows those runs"
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
    lines += ["", "![accuracy over training](accuracy.png)"]
    if source is not None:
        lines.append("![accuracy vs latency](pareto.png)")
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    written.append(report)
    return written
