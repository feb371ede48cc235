"""``attnzoo report``: the leaderboard sub-command (its arguments are the bench arguments of
:mod:`attnzoo.cli` plus ``--eval-dir`` and ``--leaderboard``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from attnzoo.bench.leaderboard import LEADERBOARD_PRESETS, PRODUCED, load_quality, measure_costs
from attnzoo.bench.leaderboard_report import print_summary, write_leaderboard
from attnzoo.bench.report import compare_runs, write_plots, write_report
from attnzoo.runs import new_run_dir, replace_outputs

__all__ = ["cmd_report", "report_command"]


def report_command(args: argparse.Namespace) -> str:
    """The command line that reproduces a leaderboard, stated in it."""
    parts = ["attnzoo report", "--full" if args.full else "--quick"]
    parts += [f"--{k} {getattr(args, k)}" for k in ("only", "family", "threads") if getattr(args, k)]
    if args.timeout_s is not None:
        parts.append(f"--timeout {args.timeout_s:g}")
    if args.eval_dir != "reports/eval":
        parts.append(f"--eval-dir {args.eval_dir}")
    if args.from_json:
        parts.append(f"--from {args.from_json}")
    if args.out:
        parts.append(f"--out {args.out}")
    return " ".join(parts)


def cmd_report(args: argparse.Namespace, names: list[str], against: dict[str, Any] | None) -> int:
    """``attnzoo report``: the leaderboard (``--full``: the committed sweep; ``--quick``: two sizes,
    and the committed leaderboard's figures beside the fresh ones), into a new run folder under
    ``reports/runs`` unless ``--out`` names the folder to replace."""
    if args.backend != "local":
        raise SystemExit(
            "attnzoo report: --backend ray has nothing to distribute: a family's latency is timed "
            "interleaved in one process on this machine (attnzoo bench --backend ray distributes families)"
        )
    if args.contenders:
        raise SystemExit("attnzoo report: --contenders belongs to --suite sparse")
    committed = Path(args.leaderboard)
    baseline = json.loads(committed.read_text()) if not args.full and committed.is_file() else None
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        if not isinstance(doc, dict) or "interleaved" not in doc:
            raise SystemExit(f"--from {args.from_json}: not a leaderboard.json (no interleaved timings)")
    else:
        config = LEADERBOARD_PRESETS["full" if args.full else "quick"]
        overrides = {k: getattr(args, k) for k in ("threads", "timeout_s") if getattr(args, k) is not None}
        doc = measure_costs(
            names, dataclasses.replace(config, **overrides), progress=not args.no_progress
        )
    quality = load_quality(Path(args.eval_dir))
    out = Path(args.out) if args.out else new_run_dir(Path("reports") / "runs")
    command = report_command(args)
    measured_by = doc.get("command", command) if args.from_json else command
    written = write_leaderboard(doc, quality, out, measured_by, command if args.from_json else "")
    produced = list(PRODUCED)
    if not args.full:
        (out / "bench.json").write_text(json.dumps(doc, indent=1))
        plots = write_plots(doc, out)
        written += [out / "bench.json", write_report(doc, out, plots), *(out / p for p in plots)]
        produced += ["bench.json", "report.md", *plots]
    if args.out:
        replace_outputs(out, written, produced)
    print_summary(doc, quality, baseline, committed)
    print(f"wrote {', '.join(str(p) for p in written)}")
    if against is not None:
        lines, regressions = compare_runs(doc, against)
        print("\n".join(lines))
        print(f"{regressions} regression(s) against {args.against}")
    return 0
