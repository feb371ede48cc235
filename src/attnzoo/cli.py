"""The ``attnzoo`` command line: list, info, bench, report, eval, eval-timm, analyze, readme."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import attnzoo
from attnzoo.analysis.cli import add_analyze_parser
from attnzoo.docs import constructor_arguments
from attnzoo.registry import FAMILIES
from attnzoo.runs import new_run_dir
from attnzoo.tasks.cli import add_eval_parser
from attnzoo.tasks.jobs import JobFailedError, add_backend_args, backend_from_args

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    names = attnzoo.list_mechanisms(family=args.family)
    width = max((len(n) for n in names), default=4)
    print(f"{'name':<{width}}  {'family':<15}  {'parity':<9}  time complexity")
    for name in names:
        c = attnzoo.card(name)
        print(f"{name:<{width}}  {c.family:<15}  {c.parity:<9}  {c.time_complexity}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    c = attnzoo.card(args.name)
    print(f"{c.name}: {c.summary}")
    print(f"  family          {c.family}")
    print(f"  aliases         {', '.join(c.aliases) or '–'}")
    print(f"  paper           {c.paper} ({c.year or '–'})" + (f"  arXiv:{c.arxiv}" if c.arxiv else ""))
    official = c.official_repo or "–"
    if c.official_commit:
        official += f" @ {c.official_commit[:12]}"
    print(f"  official code   {official}")
    print(
        f"  parity          {c.parity}"
        + (f" (fixtures: {', '.join(c.parity_fixtures)})" if c.parity_fixtures else "")
    )
    print(f"  time            {c.time_complexity}")
    print(f"  memory          {c.memory_complexity}")
    print(f"  layouts         {', '.join(c.layouts)}; spatial dims {c.spatial_dims}")
    print(
        f"  causal          {'yes' if c.causal else 'no'}; variable size {'yes' if c.variable_size else 'no'}"
    )
    if c.family == "token_mixer":
        print(f"  key padding     {attnzoo.families.key_padding_support(c)}")
    print(f"  benchmark cfg   {dict(c.bench)}")
    print(f"  arguments       attnzoo.create({c.name!r}, ...):")
    for a in constructor_arguments(c.name):
        default = "required" if a.required else f"default {a.default!r}"
        print(f"    {a.name}: {a.annotation or 'any'} ({default}) - {a.doc or 'undocumented'}")
    print("  ledger:")
    for line in c.ledger:
        print(f"    - {line}")
    return 0


def _select(args: argparse.Namespace) -> list[str]:
    if args.only:
        names = [attnzoo.card(n.strip()).name for n in args.only.split(",") if n.strip()]
    else:
        names = attnzoo.list_mechanisms(family=args.family)
    if args.family:
        names = [n for n in names if attnzoo.card(n).family == args.family]
    if not names:
        raise SystemExit("no mechanism selected")
    return names


def _load_against(path: str) -> dict[str, Any]:
    """The earlier ``bench.json`` that ``--against`` names, checked before anything runs."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"--against {path}: no such file (give the bench.json of an earlier run)")
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SystemExit(f"--against {path}: not a JSON file ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise SystemExit(f"--against {path}: not a bench.json (no 'results' list)")
    return doc


def _suite_command(args: argparse.Namespace) -> str:
    """The command line that reproduces a suite run, stated in its report."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    parts = [f"OMP_WAIT_POLICY={policy}"] if policy else []
    parts += [f"attnzoo {args.command} --suite {args.suite}", "--full" if args.full else "--quick"]
    if args.threads is not None:
        parts.append(f"--threads {args.threads}")
    if args.contenders:
        parts.append(f"--contenders {args.contenders}")
    if args.out:
        parts.append(f"--out {args.out}")
    return " ".join(parts)


def _run_suite(args: argparse.Namespace) -> int:
    """``--suite linear|sparse``: one in-process, interleaved comparison, written to a new run
    folder under ``reports/<suite>/runs`` unless ``--out`` names the folder to replace."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = _suite_command(args)
    if args.suite == "sparse":
        from attnzoo.bench.sparse_report import write_sparse_outputs
        from attnzoo.bench.sparse_suite import CONTENDERS, SPARSE_PRESETS, run_sparse_suite

        config = SPARSE_PRESETS["full" if args.full else "quick"]
        if args.contenders:
            chosen = tuple(c.strip() for c in args.contenders.split(",") if c.strip())
            if not chosen or set(chosen) - set(CONTENDERS):
                raise SystemExit(f"--contenders {args.contenders}: choose from {', '.join(CONTENDERS)}")
            config = dataclasses.replace(config, contenders=chosen)
        doc = run_sparse_suite(config, progress=not args.no_progress)
    else:
        if args.contenders:
            raise SystemExit(f"attnzoo {args.command}: --contenders belongs to --suite sparse")
        from attnzoo.bench.linear_suite import run_linear_suite, write_linear_outputs

        doc = run_linear_suite(
            **({"naive_n": 1024, "reference_n": 1024, "scaling_ns": (1024, 4096)} if not args.full else {})
        )
    out = Path(args.out) if args.out else new_run_dir(Path("reports") / args.suite / "runs")
    written = (write_sparse_outputs if args.suite == "sparse" else write_linear_outputs)(doc, out, command)
    print((out / f"{args.suite}.md").read_text())
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from attnzoo.bench.report import compare_runs, summarise, write_plots, write_report
    from attnzoo.bench.runner import PRESETS, run_benchmarks

    if args.command == "report" and args.suite == "mechanisms":
        return _cmd_report(args)
    against = _load_against(args.against) if args.against else None
    try:
        backend = backend_from_args(args)
    except (ValueError, TypeError, ModuleNotFoundError) as exc:
        raise SystemExit(f"attnzoo {args.command}: {exc}") from exc
    if backend is not None and (args.suite != "mechanisms" or args.from_json):
        what = "--from re-renders without measuring" if args.from_json else (
            f"the {args.suite} suite is one comparison timed in one process, interleaved"
        )
        raise SystemExit(f"attnzoo {args.command}: --backend ray has nothing to distribute: {what}")
    if args.suite != "mechanisms":
        return _run_suite(args)
    if args.contenders:
        raise SystemExit(f"attnzoo {args.command}: --contenders belongs to --suite sparse")
    out = Path(args.out or args.default_out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
    else:
        config = PRESETS["full" if args.full else "quick"]
        overrides = {k: getattr(args, k) for k in ("threads", "timeout_s") if getattr(args, k) is not None}
        if args.equal_width:
            overrides["equal_width"] = True
        config = dataclasses.replace(config, **overrides)
        try:
            doc = run_benchmarks(_select(args), config, progress=not args.no_progress, backend=backend)
        except JobFailedError as exc:
            raise SystemExit(f"attnzoo {args.command}: {exc}") from exc
        (out / "bench.json").write_text(json.dumps(doc, indent=1))
    plots = write_plots(doc, out)
    report = write_report(doc, out, plots)
    for row in summarise(doc):
        first = row["first"]
        lat = first["fwd_ms"]["median"] if first and first.get("status") == "ok" else float("nan")
        exp = f"{row['exponent']:.2f}" if row["exponent"] is not None else "–"
        where = first["size"] if first else "-"
        print(f"{row['name']:<32} {row['family']:<15} fwd {lat:9.3f} ms @ {where}  exp {exp}")
    print(f"wrote {report} and {', '.join(str(out / p) for p in plots)}")
    if args.against:
        lines, regressions = compare_runs(doc, against)
        print("\n".join(lines))
        print(f"{regressions} regression(s) against {args.against}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from attnzoo.bench.leaderboard_cli import cmd_report

    against = _load_against(args.against) if args.against else None
    return cmd_report(args, [] if args.from_json else _select(args), against)


def _cmd_eval_timm(args: argparse.Namespace) -> int:
    from attnzoo.tasks.timm_digits import PRESETS, report_markdown, run_timm_digits

    config = PRESETS["quick" if args.quick else "full"]
    try:
        changes = {k: getattr(args, k) for k in ("epochs", "threads") if getattr(args, k) is not None}
        if args.seeds is not None:
            changes["seeds"] = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        config = dataclasses.replace(config, **changes)
        mechanisms = [m.strip() for m in args.mechanisms.split(",") if m.strip()] if args.mechanisms else None
        doc = run_timm_digits(config, mechanisms, jobs=args.jobs, progress=not args.no_progress)
    except (KeyError, ValueError) as exc:
        print(f"attnzoo eval-timm: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else new_run_dir(Path(args.runs))
    out.mkdir(parents=True, exist_ok=True)
    text = report_markdown(doc)
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "report.md").write_text(text)
    print(text)
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return 0


def _add_eval_timm_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-timm",
        help="timm's vit_tiny on digits with its attention swapped to each 2-D token mixer",
        description="Train timm's vit_tiny_patch16_224 (img 8, patch 2, 1 channel, 10 classes) on the "
        "digits task with timm's attention and with each 2-D token mixer (attnzoo.integrations.timm), "
        "several seeds; test accuracy and interleaved time per training step. Writes results.json and "
        "report.md to a new directory under --runs unless --out is given.",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny smoke configuration (one seed, 2 steps, width 24)"
    )
    p.add_argument("--mechanisms", help="comma-separated token mixers (default: every 2-D token mixer)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's; full: 0,1,2)")
    p.add_argument("--epochs", type=int, help="training epochs of every run (default: the preset's)")
    p.add_argument("--threads", type=int, help="torch threads (default: the preset's; full: 2)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="training runs at once, each in its own process with threads/jobs threads (default: 1)",
    )
    p.add_argument("--out", help="output directory, overwritten (e.g. reports/timm/vit_tiny_digits)")
    p.add_argument(
        "--runs", default="reports/timm/runs", help="parent of the new run directory (default: %(default)s)"
    )
    p.add_argument("--no-progress", action="store_true", help="no per-run lines")
    p.set_defaults(func=_cmd_eval_timm)


def _cmd_readme(args: argparse.Namespace) -> int:
    from attnzoo.docs import update_readme

    changed = update_readme(Path(args.path), check=args.check)
    if args.check and changed:
        print(f"{args.path} is out of date: run `attnzoo readme`")
        return 1
    print(f"{args.path}: {'updated' if changed else 'up to date'}")
    return 0


def _add_bench_args(p: argparse.ArgumentParser, default_out: str) -> None:
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="two sizes, forward only (default)")
    preset.add_argument("--full", action="store_true", help="full sweeps, forward and backward")
    p.add_argument("--only", help="comma-separated mechanism names")
    p.add_argument("--family", choices=FAMILIES)
    p.add_argument(
        "--out",
        help=f"output directory (default: {default_out}; --suite linear/sparse: a new folder under "
        "reports/<suite>/runs, since --out replaces the folder's earlier report)",
    )
    p.add_argument("--against", help="earlier bench.json to compare with (ratios, regressions)")
    p.add_argument("--from", dest="from_json", help="re-render an existing bench.json instead of measuring")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: preset)")
    p.add_argument("--timeout", dest="timeout_s", type=float, help="seconds per mechanism (default: preset)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--equal-width",
        action="store_true",
        help="every mechanism of a family at one width and head count (default: each card's own config)",
    )
    p.add_argument(
        "--suite",
        choices=["mechanisms", "linear", "sparse"],
        default="mechanisms",
        help="mechanisms (default: every registered mechanism), linear (chunked vs naive linear-attention "
        "kernels and their scaling; --full for N up to 32K) or sparse (the sparse softmax kernels "
        "against compiled FlexAttention, NATTEN and masked SDPA; --full for the committed sweep)",
    )
    p.add_argument(
        "--contenders",
        help="--suite sparse: comma-separated subset of attnzoo,flex,natten,sdpa (default: all)",
    )
    add_backend_args(p)
    p.set_defaults(func=_cmd_bench, default_out=default_out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnzoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="registered mechanisms")
    p.add_argument("--family", choices=FAMILIES)
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("info", help="a mechanism's card")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)
    _add_bench_args(
        sub.add_parser("bench", help="measure cost: params, FLOPs, latency, memory"), "reports/bench"
    )
    p = sub.add_parser(
        "report",
        help="the leaderboard: committed quality beside cost at equal width, per family (the main job)",
        description="Per family, the quality of every committed reports/eval/<task>/results.json beside "
        "latency (interleaved, min), memory and FLOPs at equal width, with a Pareto plot per family. "
        "--full: N = 256, 1024, 4096 (the committed reports/leaderboard.md); --quick (default): N = 256, "
        "1024, the bench report too, and the committed leaderboard's figures printed beside the fresh "
        "ones. Cost is always at equal width. Writes a new folder under reports/runs unless --out.",
    )
    _add_bench_args(p, "a new folder under reports/runs")
    p.add_argument("--eval-dir", default="reports/eval", help="committed eval results (default: %(default)s)")
    p.add_argument(
        "--leaderboard",
        default="reports/leaderboard.json",
        help="--quick: the committed leaderboard to print beside the fresh figures (default: %(default)s)",
    )
    add_analyze_parser(sub)
    add_eval_parser(sub)
    _add_eval_timm_parser(sub)
    p = sub.add_parser("readme", help="regenerate the README mechanism table")
    p.add_argument("--path", default="README.md")
    p.add_argument("--check", action="store_true", help="exit 1 if the table is out of date")
    p.set_defaults(func=_cmd_readme)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyError as exc:
        print(f"attnzoo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
