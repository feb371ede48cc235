"""The ``attnzoo eval`` sub-command: train small models with chosen mechanisms on a task and
report their quality next to the benchmark's cost.

Examples::

    attnzoo eval --list
    attnzoo eval mqar --mechanisms mhsa,linear_attention,based      # preset zoology-cpu, the headline
    attnzoo eval mqar --seeds 0,1,2 --jobs 2 --latency               # 3 seeds x 3 learning rates, 2 at once
    attnzoo eval mqar --preset cpu --lrs 1e-3,3e-3,1e-2              # any preset with a learning-rate sweep
    attnzoo eval mqar --preset tiny --mechanisms mhsa --seeds 0,1 --bench reports/bench/bench.json
    attnzoo eval digits --mechanisms mhsa,se,eca --mechanism-kwargs 'mhsa:{"num_heads": 2}'
    attnzoo eval --from reports/eval/mqar/results.json --bench reports/bench/bench.json  # re-render
    attnzoo eval mqar --seeds 0,1,2 --out reports/eval/mqar         # replace the committed report
    attnzoo eval mqar --seeds 0,1,2 --resume reports/eval/runs/mqar/20261207-061500  # after a kill
    attnzoo eval mqar --seeds 0,1,2 --jobs 2 --backend ray --ray-address auto       # on a Ray cluster

Every task has a validation split (generated from its own seed, or held out of the digits'
training split): it chooses each run's checkpoint and each (mechanism, seed)'s learning rate, and
the report shows the test accuracy of that choice, the whole sweep (validation and test per rate)
and the mechanisms that cannot run the task with the reason. ``--from`` re-renders older documents,
which chose on test, and says so.

Results go to a new folder under ``--runs`` (default ``reports/eval/runs/<task>/<UTC time>``) unless
``--out`` names one: the committed reports change only when asked. Every finished run is journaled
(``runs.jsonl`` in the output folder) as it lands; ``--resume FOLDER`` continues an interrupted eval
there, training only what it had not finished. The journal is removed once the report is written.

``--backend ray`` trains the same runs as Ray tasks (a local Ray instance, or the cluster that
``--ray-address`` names), each with the threads ``--jobs`` gives and that many CPUs reserved
(``--ray-cpus``), re-running a run whose worker raised or died (``--ray-retries``); the results
are those of the local pool for a seed, journaled the same way, so ``--resume`` works on both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import attnzoo
from attnzoo.runs import new_run_dir, replace_outputs
from attnzoo.tasks.catalog import TASKS, get_task
from attnzoo.tasks.jobs import JOURNAL, JobFailedError, add_backend_args, backend_from_args
from attnzoo.tasks.report import PRODUCED, markdown_table, selection_split, write_results
from attnzoo.tasks.runner import run_eval

__all__ = ["add_eval_parser", "parse_mechanism_kwargs"]


def parse_mechanism_kwargs(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["name:{json}", ...]`` -> ``{name: kwargs}``; raises ``ValueError`` on a malformed item."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, raw = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--mechanism-kwargs expects NAME:JSON, got {item!r}")
        try:
            kwargs = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--mechanism-kwargs {item!r}: invalid JSON ({exc})") from exc
        if not isinstance(kwargs, dict):
            raise ValueError(f"--mechanism-kwargs {item!r}: JSON must be an object")
        out[attnzoo.card(name.strip()).name] = kwargs
    return out


def _list_tasks() -> None:
    for name, spec in TASKS.items():
        presets = ", ".join(f"{p}{'*' if p == spec.default_preset else ''}" for p in spec.presets)
        print(f"{name:<20} {spec.kind:<9} {'/'.join(spec.families):<24} presets: {presets}")
        print(f"{'':<20} {spec.summary}")


def _default_mechanisms(families: tuple[str, ...]) -> list[str]:
    preferred = [n for n in ("mhsa", "linear_attention", "based") if n in attnzoo.list_mechanisms()]
    if "token_mixer" in families and preferred:
        return preferred
    return attnzoo.list_mechanisms(family=families[0])


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.list:
        _list_tasks()
        return 0
    if args.from_json:
        return _rerender(args)
    if args.task is None:
        print("attnzoo eval: name a task (see `attnzoo eval --list`)")
        return 2
    out: Path | None = None
    fresh = not (args.out or args.resume)
    try:
        spec = get_task(args.task)
        mechanisms = (
            [m.strip() for m in args.mechanisms.split(",") if m.strip()]
            if args.mechanisms
            else _default_mechanisms(spec.families)
        )
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        overrides = parse_mechanism_kwargs(args.mechanism_kwargs or [])
        model = json.loads(args.model_kwargs) if args.model_kwargs else None
        if model is not None and not isinstance(model, dict):
            raise ValueError("--model-kwargs must be a JSON object")
        bench = json.loads(Path(args.bench).read_text()) if args.bench else None
        backend = backend_from_args(args)
        out = _output_folder(args, spec.name)
        doc = run_eval(
            spec.name,
            mechanisms,
            preset=args.preset,
            seeds=seeds,
            steps=args.steps,
            lr=args.lr,
            lrs=None if args.lrs is None else [float(x) for x in args.lrs.split(",") if x.strip()],
            target=args.target,
            overrides=overrides,
            model=model,
            progress=not args.no_progress,
            jobs=args.jobs,
            latency=args.latency,
            journal=out / JOURNAL,
            backend=backend,
        )
    except JobFailedError as exc:
        print(f"attnzoo eval: {exc}\nthe finished runs are journaled: --resume {out} runs the rest")
        return 1
    except (KeyError, ValueError, OSError, ModuleNotFoundError) as exc:
        if fresh and out is not None and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        print(f"attnzoo eval: {exc}")
        return 2
    paths = write_results(doc, out, bench)
    replace_outputs(out, paths, PRODUCED)
    print(markdown_table(doc, bench))
    for name, why in doc["task"]["refused"].items():
        if name in doc["task"]["mechanisms"]:
            print(f"{name}: not run: {why}")
    for run in doc["runs"]:
        if run["status"] != "ok":
            print(f"{run['mechanism']} (seed {run['seed']}): {run['error']}")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0 if any(r["status"] == "ok" for r in doc["runs"]) else 1


def _output_folder(args: argparse.Namespace, task: str) -> Path:
    """``--resume`` (an interrupted eval's folder, with its journal), ``--out`` (named by the user) or
    a new folder under ``--runs``."""
    if args.resume:
        if args.out:
            raise ValueError("give --resume FOLDER or --out FOLDER, not both")
        folder = Path(args.resume)
        if not (folder / JOURNAL).is_file():
            raise ValueError(
                f"--resume {folder}: no {JOURNAL} there (the eval finished, or never started in it)"
            )
        return folder
    if args.out:
        return Path(args.out)
    return new_run_dir(Path(args.runs) / task)


def _rerender(args: argparse.Namespace) -> int:
    """Write the report of an earlier ``results.json`` again (with ``--bench``: the Pareto plot)."""
    src = Path(args.from_json)
    try:
        doc = json.loads(src.read_text())
        if not isinstance(doc, dict) or not {"task", "runs", "meta"} <= doc.keys():
            raise ValueError(f"--from {src}: not a results.json written by `attnzoo eval`")
        bench = json.loads(Path(args.bench).read_text()) if args.bench else None
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        print(f"attnzoo eval: {exc}")
        return 2
    doc.pop("summary", None)
    out = Path(args.out) if args.out else new_run_dir(Path(args.runs) / doc["task"]["name"])
    paths = write_results(doc, out, bench)
    replace_outputs(out, paths, PRODUCED)
    print(markdown_table(doc, bench))
    if selection_split(doc) == "test":
        print(f"{src}: learning rates chosen on the test split (older protocol, before validation splits)")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def add_eval_parser(subparsers: Any) -> None:
    """Register ``eval`` on an ``argparse`` sub-parsers object (``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "eval",
        help="train small models per mechanism on a task; quality next to cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", nargs="?", choices=list(TASKS), help="task to run (see --list)")
    p.add_argument("--list", action="store_true", help="list tasks and presets (* = default) and exit")
    p.add_argument(
        "--mechanisms",
        help="comma-separated mechanism names (default: mhsa,linear_attention,based "
        "for sequence tasks, the whole family otherwise)",
    )
    p.add_argument(
        "--preset", help="task preset (default: the task's, marked * by --list; for mqar 'zoology-cpu')"
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one run each (default: %(default)s)")
    p.add_argument("--steps", type=int, help="replace the preset's step budget (all mechanisms alike)")
    p.add_argument(
        "--lr", type=float, help="one learning rate for all mechanisms (turns off the preset's sweep)"
    )
    p.add_argument(
        "--lrs",
        help="comma-separated learning rates to sweep per mechanism and seed; the run of best validation "
        "accuracy is reported (replaces the preset's sweep; '' turns it off)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in its own process with threads/jobs threads (default: 1)",
    )
    p.add_argument("--target", type=float, help="stop a run once validation accuracy reaches this")
    p.add_argument(
        "--mechanism-kwargs",
        action="append",
        metavar="NAME:JSON",
        help="constructor kwargs for one mechanism, e.g. 'based:{\"feature_dim\": 8}' (repeatable)",
    )
    p.add_argument(
        "--model-kwargs",
        metavar="JSON",
        help="backbone settings for every mechanism alike, e.g. '{\"short_conv\": 3}' (sequence tasks: "
        "width, depth, mlp_ratio, short_conv, base_conv, tie_embeddings, positional)",
    )
    p.add_argument(
        "--latency",
        action="store_true",
        help="after training, time each mechanism's backbone as trained (one batch of test data) for "
        "the latency column and the Pareto plot",
    )
    p.add_argument(
        "--bench",
        metavar="PATH",
        help="bench.json from `attnzoo bench`: its card-configuration latencies replace --latency's",
    )
    p.add_argument(
        "--from",
        dest="from_json",
        metavar="PATH",
        help="re-render an earlier results.json (into a new folder unless --out) instead of training",
    )
    p.add_argument(
        "--out", help="output folder, replaced (e.g. the committed reports/eval/<task>; default: a new one)"
    )
    p.add_argument(
        "--runs",
        default="reports/eval/runs",
        help="parent of the new run folders, one sub-folder per task (default: %(default)s)",
    )
    p.add_argument("--resume", metavar="FOLDER", help="continue the interrupted eval whose folder this is")
    add_backend_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)
