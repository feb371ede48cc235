"""``python -m attnzoo.distributed.report``: the measurement report of core attention
disaggregation (``distributed.md``, ``distributed.json``, ``distributed.png``).

1. **Simulation** (no processes; the plans' own exact counts): for synthetic document-length mixes
   (:data:`attnzoo.distributed._plan_sim.MIXES`, drawn with stated seeds) packed into ``T``
   tokens on ``W`` ranks, the load imbalance (busiest rank's query-key pairs, i.e. FLOPs, over
   the mean) and the bytes one attention layer of Llama-3-8B in bfloat16 moves
   (:class:`AttentionShape` defaults), for
   :func:`plan_local` (no disaggregation), :func:`plan_per_document` (naive per-document
   placement) and :func:`plan_core_attention` (DistCA's planner, ``min_chunk`` 128 and 32).
2. **Real run** on gloo processes of this machine (:mod:`attnzoo.distributed._gloo_run`):
   :class:`DisaggregatedAttention` with each planner in float64, the bytes it sent against the
   plan's prediction, equality with single-process attention, wall times.

Without ``--out`` the report goes to a new folder ``reports/distributed/runs/<UTC stamp>``; the
committed report is written only by ``--out reports/distributed``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from attnzoo.distributed._gloo_run import RealRun, run_on_gloo
from attnzoo.distributed._plan import AttentionShape
from attnzoo.distributed._plan_sim import MIXES, PRESETS, K, ReportConfig, document_lengths, simulate
from attnzoo.runs import new_run_dir, replace_outputs

__all__ = ["main", "report_markdown", "run_report", "write_plot"]

PRODUCED = ("distributed.md", "distributed.json", "distributed.png")


def _cell(rows: list[dict[str, Any]], **keys: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r[k] == v for k, v in keys.items())]


def _mean(cell: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in cell) / len(cell)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}" if n >= 2**20 else f"{n / 2**20:.2f}"


def _simulation_md(doc: dict[str, Any]) -> list[str]:
    config, rows = doc["config"], doc["simulation"]
    planners = list(dict.fromkeys(r["planner"] for r in rows))
    lines = []
    for mix in config["mixes"]:
        lines += [
            f"### Mix `{mix}`",
            "",
            MIXES[mix].describe() + f"; seeds {list(config['seeds'])}.",
            "",
            "| T | W | docs (longest) | "
            + " | ".join(f"{p} imbalance" for p in planners)
            + " | "
            + " | ".join(f"{p} fwd MiB (busiest rank)" for p in planners)
            + " |",
            "|" + "---|" * (3 + 2 * len(planners)),
        ]
        for total in config["tokens"]:
            for world in config["worlds"]:
                cells = {p: _cell(rows, mix=mix, tokens=total, world=world, planner=p) for p in planners}
                first = cells[planners[0]]
                docs = "/".join(str(r["documents"]) for r in first)
                longest = max(r["longest"] for r in first)
                imb = [f"{max(r['imbalance'] for r in cells[p]):.2f}" for p in planners]
                moved = [
                    f"{_mib(_mean(cells[p], 'forward_bytes'))} "
                    f"({_mib(max(r['max_rank_bytes'] for r in cells[p]))})"
                    for p in planners
                ]
                lines.append(
                    f"| {total // K}K | {world} | {docs} ({longest}) | " + " | ".join(imb + moved) + " |"
                )
        lines.append("")
    return lines


def _span(values: list[float]) -> str:
    return f"{values[0]:.2f}-{values[-1]:.2f} (median {values[len(values) // 2]:.2f})"


def _summary_md(doc: dict[str, Any]) -> list[str]:
    """Per planner over the cells (mix, T, W; worst seed): imbalance, cells within ``1 + tolerance``,
    and bytes against the naive per-document placement's (all ranks, and the busiest rank)."""
    config, rows = doc["config"], doc["simulation"]
    planners = list(dict.fromkeys(r["planner"] for r in rows))
    keys = [(m, t, w) for m in config["mixes"] for t in config["tokens"] for w in config["worlds"]]
    cells = {
        (p, key): _cell(rows, mix=key[0], tokens=key[1], world=key[2], planner=p)
        for p in planners
        for key in keys
    }
    limit = 1 + config["tolerance"]
    lines = [f"Over the {len(keys)} cells (mix, T, W; worst seed):", ""]
    for p in planners:
        worst = sorted(max(r["imbalance"] for r in cells[p, key]) for key in keys)
        text = f"- `{p}`: imbalance {_span(worst)}, <= {limit:g} in {sum(x <= limit for x in worst)} cells"
        if p != "per_document":
            ratio = sorted(
                _mean(cells[p, key], "forward_bytes") / _mean(cells["per_document", key], "forward_bytes")
                for key in keys
            )
            busiest = sorted(
                max(r["max_rank_bytes"] for r in cells[p, key])
                / max(r["max_rank_bytes"] for r in cells["per_document", key])
                for key in keys
            )
            text += f"; bytes moved / per_document's {_span(ratio)}"
            text += f"; busiest rank's / per_document's {_span(busiest)}"
        lines.append(text)
    return [*lines, ""]


def _real_md(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| W | planner | imbalance | tasks | predicted bytes fwd / fwd+bwd | sent bytes fwd / fwd+bwd "
        "| equal to single process | max abs error (out, lse, dq, dk, dv) "
        "| fwd+bwd ms (slowest rank's min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in doc["real"]:
        world = run["config"]["world"]
        for name, p in run["planners"].items():
            err = ", ".join(f"{p['max_abs_error'][k]:.1e}" for k in ("out", "lse", "dq", "dk", "dv"))
            lines.append(
                f"| {world} | {name} | {p['imbalance']:.2f} | {p['tasks']} | "
                f"{p['predicted_bytes']['forward']:,} / {p['predicted_bytes']['total']:,} | "
                f"{p['sent_bytes']['forward']:,} / {p['sent_bytes']['total']:,} | "
                f"{'yes' if p['allclose'] else 'NO'} | {err} | {max(p['time_ms_min_per_rank']):.1f} |"
            )
    lines.append("")
    for run in doc["real"]:
        single = run["single_process"]
        gemm = ", ".join(f"{g:.0f}" for g in run["gemm_gflops_per_rank"])
        lines.append(
            f"- W={run['config']['world']}: single-process reference fwd+bwd "
            f"{single['time_ms']['min']:.1f} ms (one thread, its GEMM {single['gemm_gflops']:.0f} GFLOP/s, "
            f"timed before any rank starts); the ranks' {run['config']['gemm_n']}² fp32 GEMM in the "
            f"same rounds: {gemm} GFLOP/s (all ranks at once on this machine's cores)."
        )
    return lines


def report_markdown(doc: dict[str, Any]) -> str:
    config, shape = doc["config"], doc["shape"]
    real = doc["real"][0]["config"] if doc["real"] else None
    lines = [
        "# Core attention disaggregation: planner and executor",
        "",
        f"Command: `{doc['command']}` (preset `{config['preset']}`, {doc['elapsed_s']:.0f} s). "
        f"torch {doc['versions']['torch']}, Python {doc['versions']['python']}, "
        f"{doc['versions']['machine']}; load average {doc['load_average_before'][0]:.2f} before, "
        f"{doc['load_average_after'][0]:.2f} after.",
        "",
        "## Simulation",
        "",
        "Plans computed on paper (exact counts from the plans, no processes). Imbalance: the busiest rank's "
        "causal query-key pairs (FLOPs) over the mean; 1.00 is perfect. Bytes: one attention layer's "
        f"forward traffic between ranks (q rows out, output + log-sum-exp rows back, key/value prefixes), "
        f"for {shape['num_heads']} query heads, {shape['num_kv_heads']} key/value heads of dimension "
        f"{shape['head_dim']} in {shape['element_bytes']}-byte elements (Llama-3-8B, bfloat16); the "
        "backward moves about as much again (in the JSON). Columns: `local` computes every query where "
        "it lives (no disaggregation), `per_document` places whole documents heaviest first on the "
        f"least-loaded rank (naive), `distca_cN` is `plan_core_attention(tolerance={config['tolerance']}, "
        "min_chunk=N)`. "
        "Imbalance is the worst over the seeds, MiB the mean over seeds (busiest rank's sent+received in "
        "parentheses, worst over seeds). `distca` stays above 1 + tolerance where a piece of `min_chunk` "
        "queries is too heavy for the room left on every other rank: query i of a document costs i + 1 "
        "pairs, so `min_chunk` late queries of the longest document can outweigh the tolerance's share of "
        "a rank's mean load (few tokens per rank, or documents far longer than a shard); a smaller "
        "`min_chunk` balances further (compare the two `distca` columns).",
        "",
        *_summary_md(doc),
        *_simulation_md(doc),
        "## Real run on gloo",
        "",
    ]
    if real is not None:
        lines += [
            f"`DisaggregatedAttention` on {' and '.join(str(r['config']['world']) for r in doc['real'])} "
            f"gloo processes of this machine, {sum(real['doc_lengths'])} tokens in "
            f"{len(real['doc_lengths'])} documents (mix `{config['real_mix']}`, seed {real['seed']}, "
            f"longest {max(real['doc_lengths'])}), {real['heads']} heads of dimension {real['head_dim']}, "
            f"float64, forward and backward; `distca` is `plan_core_attention(tolerance={real['tolerance']}, "
            f"min_chunk={real['min_chunk']})`. "
            "Predicted bytes: `plan.traffic()` for rows of that shape (float64 rows and log-sum-exps); sent "
            "bytes: the payload every rank sent to the others, counted in the executor's point-to-point "
            "exchange, summed over ranks. Equal: `torch.allclose(rtol=1e-7, atol=1e-7)` of every rank's "
            "output, log-sum-exp and q/k/v gradients against single-process per-document attention. "
            "Times: every rank runs interleaved rounds (each planner once, then the GEMM), "
            f"{real['repeats']} rounds after one warm-up, minimum per rank; the ranks share this "
            "machine's cores, so these are correctness-run times, not a speed claim.",
            "",
            *_real_md(doc),
        ]
    return "\n".join(lines) + "\n"


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """One row per mix, against W: imbalance, forward MiB moved per layer in all, and the busiest
    rank's forward MiB (sent + received); colour the planner, line style ``T``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config, rows = doc["config"], doc["simulation"]
    planners = list(dict.fromkeys(r["planner"] for r in rows))
    styles = ["-", "--", ":", "-."]
    mixes = config["mixes"]
    fig, axes = plt.subplots(len(mixes), 3, figsize=(17, 4.4 * len(mixes)), squeeze=False)
    panels = (
        ("imbalance (max / mean FLOPs)", lambda cell: max(r["imbalance"] for r in cell)),
        ("forward MiB moved per layer, all ranks", lambda cell: _mean(cell, "forward_bytes") / 2**20),
        ("forward MiB of the busiest rank", lambda cell: max(r["max_rank_bytes"] for r in cell) / 2**20),
    )
    for row, mix in zip(axes, mixes):
        for ci, planner in enumerate(planners):
            for si, total in enumerate(config["tokens"]):
                worlds = config["worlds"]
                cells = [_cell(rows, mix=mix, tokens=total, world=w, planner=planner) for w in worlds]
                kw = {"color": f"C{ci}", "ls": styles[si % 4], "marker": "o", "ms": 3}
                for ax, (_, value) in zip(row, panels):
                    ys = [max(value(cell), 1e-3) for cell in cells]
                    ax.plot(worlds, ys, label=f"{planner}, T={total // K}K", **kw)
        row[0].axhline(1 + config["tolerance"], color="grey", lw=0.8, ls=":")
        for ax, (what, _) in zip(row, panels):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(config["worlds"], [str(w) for w in config["worlds"]])
            ax.set_xlabel("ranks W")
            ax.set_ylabel(what)
            ax.set_title(f"mix {mix}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=6, ncol=2)
    fig.suptitle(
        "Core attention disaggregation planners, one attention layer of Llama-3-8B in bf16 "
        "(grey dotted: 1 + tolerance; line style: T)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run_report(config: ReportConfig, command: str) -> dict[str, Any]:
    """Measure everything ``config`` names; returns the JSON document."""
    start = time.perf_counter()
    load_before = list(os.getloadavg())
    simulation = simulate(config)
    lengths = tuple(document_lengths(config.real_mix, config.real_tokens, 0))
    real = [
        run_on_gloo(
            RealRun(
                world=w,
                doc_lengths=lengths,
                tolerance=config.tolerance,
                repeats=config.real_repeats,
                gemm_n=config.gemm_n,
                min_chunk=min(config.min_chunks),
            )
        )
        for w in config.real_worlds
    ]
    return {
        "command": command,
        "config": asdict(config),
        "mixes": {name: asdict(MIXES[name]) for name in {*config.mixes, config.real_mix}},
        "shape": asdict(AttentionShape()),
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "elapsed_s": time.perf_counter() - start,
        "simulation": simulation,
        "real": real,
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m attnzoo.distributed.report", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default="full", help="what to measure (default: full)"
    )
    p.add_argument("--out", help="output folder, replaced (e.g. reports/distributed)")
    p.add_argument(
        "--runs",
        default="reports/distributed/runs",
        help="parent of the new run folder (default: %(default)s)",
    )
    p.add_argument(
        "--real-worlds", help="comma-separated gloo world sizes of the real run (default: the preset's)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m attnzoo.distributed.report``."""
    args = _parse(argv)
    config = PRESETS[args.preset]
    if args.real_worlds:
        try:
            worlds = tuple(int(w) for w in args.real_worlds.split(",") if w.strip())
        except ValueError:
            worlds = ()
        if not worlds or min(worlds) < 1 or any(config.real_tokens % w for w in worlds):
            print(
                f"attnzoo.distributed.report: --real-worlds must list positive ints dividing "
                f"{config.real_tokens}, got {args.real_worlds!r}",
                file=sys.stderr,
            )
            return 2
        config = replace(config, real_worlds=worlds)
    command = shlex.join(
        ["python", "-m", "attnzoo.distributed.report", *(sys.argv[1:] if argv is None else argv)]
    )
    doc = run_report(config, command)
    out = Path(args.out) if args.out else new_run_dir(Path(args.runs))
    out.mkdir(parents=True, exist_ok=True)
    written = [out / name for name in PRODUCED]
    written[0].write_text(report_markdown(doc))
    written[1].write_text(json.dumps(doc, indent=1) + "\n")
    write_plot(doc, written[2])
    replace_outputs(out, written, PRODUCED)
    print(written[0].read_text())
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
