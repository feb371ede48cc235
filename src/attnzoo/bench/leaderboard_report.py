"""The leaderboard's Markdown and plots (:func:`write_leaderboard`) from a cost document of
:func:`attnzoo.bench.leaderboard.measure_costs` and the committed quality of
:func:`attnzoo.bench.leaderboard.load_quality`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from attnzoo.bench.leaderboard import (
    REFERENCE_N,
    family_tasks,
    flops_cell,
    quality_cell,
    quality_of,
    reference_row,
)
from attnzoo.bench.plots import Point
from attnzoo.registry import FAMILIES

__all__ = ["pareto_points", "write_leaderboard"]


def pareto_points(task: dict[str, Any], results: list[dict[str, Any]], n: int = REFERENCE_N) -> list[Point]:
    """The Pareto panel of ``task`` at ``n`` tokens: each evaluated result's latency at
    :func:`reference_row` (its N named when it is not ``n``) against its quality, the non-dominated
    ones marked (:func:`attnzoo.tasks.report.pareto_front`)."""
    from attnzoo.tasks.report import pareto_front

    points = []
    for res in results:
        row, _ = quality_of(task, res)
        ref = reference_row(res, n)
        if row is None or not row.get("ok") or ref is None or "interleaved" not in ref:
            continue
        label = res["name"] if ref["n"] == n else f"{res['name']} (N={ref['n']})"
        points.append(Point(label, ref["interleaved"]["min"], row["test_accuracy"], row["test_accuracy_std"]))
    front = set(pareto_front([(p.label, p.x, p.y) for p in points]))
    for p in points:
        p.front = p.label in front
    return points


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _row_cells(res: dict[str, Any], tasks: list[dict[str, Any]]) -> list[str]:
    ref = reference_row(res)
    timed = ref is not None and "interleaved" in ref
    status = "–" if ref is None else ref.get("status", "–")
    size = "x".join(str(s) for s in ref["size"]) if ref else "–"
    peak = ref.get("pct_gemm_peak") if timed else None
    by_n = " · ".join(
        f"{r['n']}: {_ms(r['interleaved']['min'])}" if "interleaved" in r else f"{r['n']}: {r['status']}"
        for r in res["sizes"]
        if r.get("status") != "skipped"
    )
    own = res.get("card_config", res["config"])
    return [
        f"`{res['name']}`",
        *(quality_cell(t, res) for t in tasks),
        (size if len(ref["size"]) == 1 else f"{size} (N={ref['n']})") if ref else "–",
        _ms(ref["interleaved"]["min"]) if timed else status,
        "–" if peak is None else f"{peak:.0f}%" if peak >= 10 else f"{peak:.2g}%",
        _ms(ref["peak_fwd_mb"]) if ref and ref.get("status") == "ok" else status,
        flops_cell(res, ref),
        "–" if res["params"] is None else f"{res['params']:,}",
        by_n or status,
        f"`{json.dumps(res['config'])}`",
        "same" if own == res["config"] else f"`{json.dumps(own)}`",
    ]


def _sort_key(res: dict[str, Any], tasks: list[dict[str, Any]]) -> tuple[float, float]:
    row = quality_of(tasks[0], res)[0] if tasks else None
    quality = row["test_accuracy"] if row and row.get("ok") else -1.0
    ref = reference_row(res)
    latency = ref["interleaved"]["min"] if ref and "interleaved" in ref else math.inf
    return -quality, latency


def _family_section(
    doc: dict[str, Any], family: str, quality: list[dict[str, Any]], plots: dict[str, list[tuple[str, str]]]
) -> list[str]:
    from attnzoo.bench.measure import EQUAL_HEADS, EQUAL_WIDTHS
    from attnzoo.tasks.catalog import TASKS

    results = [r for r in doc["results"] if r["family"] == family]
    tasks = family_tasks(quality, family)
    catalog = [t.name for t in TASKS.values() if family in t.families]
    missing = [t for t in catalog if t not in {q["task"] for q in tasks}]
    lines = [
        f"## {family}",
        "",
        f"Width {EQUAL_WIDTHS[family]} ({EQUAL_HEADS} heads where the constructor has "
        f"`num_heads`) for every mechanism; {len(results)} configuration(s).",
    ]
    if tasks:
        lines.append("Quality from: " + ", ".join(f"`{t['task']}` ({t['preset']})" for t in tasks) + ".")
    if missing:
        lines.append(
            f"Tasks of this family without a committed result: {', '.join(f'`{t}`' for t in missing)}."
        )
    if not catalog and not tasks:
        lines.append("No attnzoo task evaluates this family yet: cost only, no quality and no Pareto plot.")
    elif not tasks:
        lines.append("No committed quality result for this family: cost only, no Pareto plot.")
    lines.append("")
    for kind in ("pareto", "cost"):
        name = f"leaderboard_{kind}_{family}.png"
        if name in plots:
            lines += [f"![{kind} {family}]({name})", ""]
    header = [
        "mechanism",
        *(f"{t['task']} ({t['preset']})" for t in tasks),
        "size at N≈1024",
        "latency ms (min, interleaved)",
        "% of GEMM peak",
        "peak memory MiB",
        "FLOPs (fwd)",
        "params",
        "latency ms at each N",
        "ran with (equal width)",
        "card's own",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for res in sorted(results, key=lambda r: _sort_key(r, tasks)):
        lines.append("| " + " | ".join(_row_cells(res, tasks)) + " |")
    timing = doc.get("interleaved", {}).get(family, {})
    notes = (
        [f"- latency not timed for the family: {timing['status']} ({timing.get('error', '')})"]
        if (timing and timing.get("status") != "ok")
        else []
    )
    for rnd in timing.get("rounds", []):
        notes += [
            f"- `{label}` failed in round {rnd['round']} of the interleaved timing: {err.splitlines()[-1]}"
            for label, err in rnd["errors"].items()
        ]
        notes.append(
            f"- round {rnd['round']}: GEMM {rnd['gemm']['gflops']:.1f} GFLOP/s, load "
            f"{rnd['load_before'][0]:.2f} before, {rnd['load_after'][0]:.2f} after"
        )
    failed = [(r["name"], s) for r in results for s in r["sizes"] if s.get("status") not in ("ok", "skipped")]
    notes += [
        f"- `{n}` at {'x'.join(map(str, s['size']))}: {s['status']} ({s.get('error', '')[:160]})"
        for n, s in failed
    ]
    return [*lines, "", *notes, ""] if notes else [*lines, ""]


def write_leaderboard(
    doc: dict[str, Any], quality: list[dict[str, Any]], out_dir: Path, command: str, rendered_by: str = ""
) -> list[Path]:
    """Write ``leaderboard.json``, ``leaderboard.md`` and its plots (a Pareto figure per family
    with committed quality, a cost figure per family) into ``out_dir``; returns the paths written.
    The Markdown states ``command``, the machine, the load, the GEMM rate and each plot's label check."""
    from attnzoo.bench.plots import pareto_figure, save
    from attnzoo.bench.report import cost_figure, cost_panels

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    plots: dict[str, list[tuple[str, str]]] = {}
    families = [f for f in FAMILIES if any(r["family"] == f for r in doc["results"])]
    for family in families:
        results = [r for r in doc["results"] if r["family"] == family]
        panels = [
            (
                f"{t['task']} ({t['preset']}) against latency at N={n}",
                t["metric"],
                pareto_points(t, results, n),
            )
            for t in family_tasks(quality, family)
            for n in doc["meta"]["config"]["seq_sizes"]
        ]
        panels = [p for p in panels if p[2]]
        if panels:
            name = f"leaderboard_pareto_{family}.png"
            fig = pareto_figure(
                panels,
                xlabel=f"forward latency, ms (equal width, min of interleaved runs, "
                f"{doc['meta']['threads']} thread(s))",
                title=f"{family}: quality vs latency (red: Pareto front)",
            )
            plots[name] = save(fig, out_dir / name)
            written.append(out_dir / name)
        name = f"leaderboard_cost_{family}.png"
        metrics = [("interleaved.min", "forward latency (ms, min)"), ("peak_fwd_mb", "peak memory (MiB)")]
        fig = cost_figure(
            cost_panels(doc, family, tuple(k for k, _ in metrics)),
            metrics,
            xlabel="tokens N (sequence length, or H*W / D*H*W; dashed = grids)",
        )
        plots[name] = save(fig, out_dir / name)
        written.append(out_dir / name)
    meta = doc["meta"]
    gemm = [r["gemm"]["gflops"] for t in doc.get("interleaved", {}).values() for r in t.get("rounds", [])]
    lines = [
        "# attnzoo leaderboard: quality beside cost, per family",
        "",
        f"Generated by `{command}` (quality read from every committed `reports/eval/<task>/results.json`)"
        + (f"; re-rendered from its JSON by `{rendered_by}`." if rendered_by else "."),
        "",
        f"{meta['date']} · {meta['cpu']} · {meta['cores']} cores · {meta['threads']} thread(s) · torch "
        f"{meta['torch']} · attnzoo {meta['attnzoo']} · python {meta['python']} · preset "
        f"`{meta['config']['preset']}` · batch {meta['config']['batch']} · cost run "
        f"{meta.get('seconds', 0) / 60:.1f} min · load average (1 min) {meta['load_average_before'][0]:.2f} "
        f"before, {meta['load_average_after'][0]:.2f} after"
        + (f" · {meta['gemm_n']}² fp32 GEMM {min(gemm):.1f}-{max(gemm):.1f} GFLOP/s" if gemm else ""),
        "",
        "Cost is measured at equal width within a family (`attnzoo.bench.measure.at_equal_width`, a card's "
        "`bench['equal_width']` overriding) at the same token counts N for sequences, grids and volumes; "
        "the configuration each mechanism ran with is beside its card's own. Latency: forward pass (eval, no "
        "grad, batch 1) of every configuration of a family timed in one process, interleaved (each "
        f"repetition calls every mechanism once) with a {meta['gemm_n']}² fp32 GEMM, minimum of "
        f"{meta['config']['repeats']} repetitions after {meta['config']['warmup']} warm-up; *% of GEMM peak* "
        "is FLOPs / that minimum over the peak, the fastest GEMM of all rounds of the run (under load a "
        "mechanism can beat a GEMM's slowed rounds, so a share near or above 100% says the peak is "
        "uncertain, not that the mechanism beats it). Memory: peak resident-set growth of "
        "one forward in a fresh process per mechanism. FLOPs: `torch.utils.flop_counter` (matmuls, "
        "convolutions, attention); when it sees none (elementwise work), the card's formula "
        "(`bench['cost_model']` \"model FLOPs\") marked *card formula*, else *not counted*, never 0. "
        "Quality: mean ± spread over seeds of the test accuracy of each seed's chosen run: the learning "
        "rate and checkpoint chosen on the task's validation split (`attnzoo eval`), or, in results that "
        "predate validation splits, on test (each task's row below says which split chose); a mechanism "
        "the task's backbone cannot host says why. It was measured in that task's own backbone and "
        "configuration, not at this width. Rows are sorted by "
        "the quality of the task scoring most of the family, then by latency.",
        "",
    ]
    if quality:
        lines += [
            "| task | preset | families | learning rate chosen on | date | file | command |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| `{q['task']}` | {q['preset']} | {', '.join(q['families'])} | {q['selection']} | "
            f"{q['date']} | `{q['path']}` | `{q['command']}` |"
            for q in quality
        ]
    else:
        lines.append("No committed eval result was found: every quality cell says so.")
    lines.append("")
    for family in families:
        lines += _family_section(doc, family, quality, plots)
    lines += [
        "## Plot label check",
        "",
        "Overlapping texts found in each figure after drawing (`attnzoo.bench.plots.overlapping_texts`):",
        "",
    ]
    lines += [
        f"- `{n}`: {'none' if not o else '; '.join(f'{a} / {b}' for a, b in o)}" for n, o in plots.items()
    ]
    md, js = out_dir / "leaderboard.md", out_dir / "leaderboard.json"
    md.write_text("\n".join(lines) + "\n")
    js.write_text(json.dumps({**doc, "command": command, "quality": quality}, indent=1))
    return [md, js, *written]


def _latency(res: dict[str, Any] | None) -> tuple[float | None, int | None]:
    ref = reference_row(res) if res else None
    if ref is None or "interleaved" not in ref:
        return None, None
    return ref["interleaved"]["min"], ref["n"]


def print_summary(
    doc: dict[str, Any], quality: list[dict[str, Any]], baseline: dict[str, Any] | None, path: Path
) -> None:
    """Print, per family, each configuration's committed quality and fresh latency at N≈1024, and,
    with ``baseline`` (the committed ``leaderboard.json`` read from ``path``), its latency there."""
    if baseline is not None:
        print(
            f"committed leaderboard: {path.with_suffix('.md')} ({baseline['meta']['date']}, "
            f"`{baseline.get('command', '–')}`); its latency beside this run's"
        )
    elif path:
        print(f"no committed leaderboard at {path}: fresh figures only")
    old = {r["name"]: r for r in baseline["results"]} if baseline else {}
    for family in FAMILIES:
        results = [r for r in doc["results"] if r["family"] == family]
        if not results:
            continue
        tasks = family_tasks(quality, family)
        print(f"\n{family}: quality from {', '.join(t['task'] for t in tasks) or 'no committed task'}")
        head = f"  {'mechanism':<34} {'quality':<24} {'fresh ms':>10} {'N':>6}"
        print(head + (f" {'committed ms':>12} {'N':>6} {'ratio':>6}" if baseline else ""))
        for res in sorted(results, key=lambda r: _sort_key(r, tasks)):
            cell = quality_cell(tasks[0], res) if tasks else "no committed result"
            cell = "not evaluated" if cell.startswith("not evaluated") else cell.split(" (")[0]
            ms, n = _latency(res)
            line = f"  {res['name']:<34} {cell:<24} {_ms(ms):>10} {n or '–':>6}"
            if baseline:
                cms, cn = _latency(old.get(res["name"]))
                ratio = f"{ms / cms:.2f}" if ms and cms and n == cn else "–"
                line += f" {_ms(cms):>12} {cn or '–':>6} {ratio:>6}"
            print(line)
