"""Markdown reports and plots of the example studies (:mod:`attnzoo.analysis.studies`).

Each writer takes a study's document and an output directory, writes ``report.md``,
``results.json`` and PNG plots there, and returns the written paths (the Markdown first);
:data:`PRODUCED` names every file a study can write (for :func:`attnzoo.runs.replace_outputs`).
Every report opens with the command that produced it and the card (paper, what is measured,
deviations) of its analysis.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from attnzoo.analysis.metrics import metric_card
from attnzoo.analysis.plots import _pyplot, _save, metric_table, plot_head_grid

__all__ = ["PRODUCED", "write_arith_report", "write_graph_report", "write_patch_report"]

_TASKS = ("ioi", "colored_objects")
PRODUCED: dict[str, tuple[str, ...]] = {
    "patch": (
        "report.md",
        "results.json",
        *(f"{t}_{k}.png" for t in _TASKS for k in ("activation", "path_logits")),
    ),
    "graph": ("report.md", "results.json", "graph_attention.png"),
    "arith": ("report.md", "results.json", "result_patch.png", "ablation.png"),
}


def _card_lines(name: str) -> list[str]:
    card = metric_card(name)
    return [
        f"**`{card.name}`** — {card.summary}",
        "",
        f"- Paper: {card.paper} (arXiv {card.arxiv}).",
        f"- Measured: {card.definition}.",
        *[f"- Deviation / reading: {n}" for n in card.notes],
        "",
    ]


def _head(title: str, doc: dict[str, Any]) -> list[str]:
    meta = doc["meta"]
    return [
        f"# {title}",
        "",
        f"Produced by `{meta['command']}` (attnzoo {meta['attnzoo']}, torch {meta['torch']}, "
        f"{meta['threads']} threads, {meta['date']}). Deterministic for the seed on one machine and "
        "thread count; the numbers below are read from `results.json` beside this file.",
        "",
    ]


def _grid(values: list[list[float | None]]) -> torch.Tensor:
    return torch.tensor([[math.nan if v is None else v for v in row] for row in values])


def _write(out: Path, doc: dict[str, Any], lines: list[str], plots: list[Path]) -> list[Path]:
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return [path, out / "results.json", *plots]


def _section(title: str, *paragraphs: str) -> list[str]:
    """``## title`` and its paragraphs, each followed by a blank line."""
    return [f"## {title}", "", *(line for p in paragraphs for line in (p, ""))]


def _head_name(h: list[int] | tuple[int, int]) -> str:
    return f"L{h[0]}H{h[1]}"


def _selected(stage: dict[str, Any]) -> str:
    parts = [f"{_head_name(s)} ({s[2]:+.2f}" + ("" if s[3] == "logits" else f" via {s[3]}") + ")"
             for s in stage["selected"]]  # fmt: skip
    return ", ".join(parts) or "none"


def write_patch_report(doc: dict[str, Any], out: str | Path) -> list[Path]:
    """Report of :func:`~attnzoo.analysis.studies.patch_study`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for task, entry in doc["tasks"].items():
        for key, title in (("activation", "activation patching of z (denoising)"), ("path_logits", "")):
            res = entry["activation"]["z"] if key == "activation" else entry["path_logits"]
            title = title or "path patching -> logits (noising)"
            path = out / f"{task}_{key}.png"
            files.append(
                plot_head_grid(_grid(res["effect"]), path, title=f"{task}: {title}", vmin=-1.0, vmax=1.0)
            )
    cfg, comp, training = doc["config"], doc["comparison"], doc["training"]
    lines = _head("Path patching and circuit reuse: IOI-like vs colored-objects-like", doc)
    lines += ["## What is measured", "", *_card_lines("activation_patching"), *_card_lines("path_patching")]
    lines += _card_lines("circuit_overlap")
    hist = training["history"]
    model = cfg["model"]
    lines += [
        "## Model",
        "",
        f"attnzoo `CausalLM` with `mhsa`: {model['layers']} layers x {model['heads_per_layer']} heads, "
        f"width {model['width']} ({model['parameters']:,} parameters), trained here on both tasks (seed "
        f"{cfg['seed']}) for {hist[-1]['step']} steps ({hist[-1]['seconds']:.0f} s). Test accuracy: "
        + ", ".join(f"{k} {v:.3f}" for k, v in training["test_accuracy"].items())
        + f". Analyses use {cfg['num_prompts']} fresh prompts per task.",
        "",
        "## Results",
        "",
    ]
    rows = []
    for task, entry in doc["tasks"].items():
        act = entry["activation"]["z"]
        ranked = entry["circuit"]["stages"]
        rows.append(
            {
                "task": task,
                "accuracy": entry["accuracy"],
                "clean logit diff": act["clean_logit_diff"],
                "corrupt logit diff": act["corrupt_logit_diff"],
                "stage 0 (-> logits)": _selected(ranked[0]),
                "stage 1 (-> q/k/v)": _selected(ranked[1]) if len(ranked) > 1 else "none",
            }
        )  # fmt: skip
    lines += [metric_table(rows, digits=2), ""]
    lines += [
        f"- Shared heads: {', '.join(_head_name(h) for h in comp['shared']) or 'none'}; IoU "
        f"{comp['iou']:.2f}, overlap coefficient {comp['overlap']:.2f}; correlation of the two tasks' "
        f"per-head effects on the logits {comp['logit_effect_correlation']:.2f}.",
    ]
    for task, heads in comp["only"].items():
        lines.append(f"- Only in {task}: {', '.join(_head_name(h) for h in heads) or 'none'}.")
    if doc["intervention"]:
        lines += ["", "### Mean-ablating the shared heads", ""]
        irows = []
        for task, r in doc["intervention"].items():
            c = r["control"]
            irows.append({
                "task": task,
                "accuracy": r["baseline"]["accuracy"],
                "logit diff": r["baseline"]["logit_diff"],
                "shared ablated: accuracy": r["ablated"]["accuracy"],
                "shared ablated: logit diff": r["ablated"]["logit_diff"],
                f"random heads ({c['draws']} draws): accuracy": c["accuracy"],
                "random: logit diff (mean ± std)": f"{c['logit_diff']:.2f} ± {c['logit_diff_std']:.2f}",
            })  # fmt: skip
        lines += [metric_table(irows, digits=3), ""]
    lines += ["", "### Attention of the circuit heads from the answer position", ""]
    for task, entry in doc["tasks"].items():
        arows = [{"head": h, **shares} for h, shares in entry["attention"].items()]
        if arows:
            lines += [f"{task}:", "", metric_table(arows, digits=3), ""]
    lines += ["### Activation patching per site (denoising, effect)", ""]
    for task, entry in doc["tasks"].items():
        for site, res in entry["activation"].items():
            eff = _grid(res["effect"])
            lines.append(
                f"- {task} `{site}`: " + "; ".join(
                    f"L{i}: " + " ".join(f"{v:+.2f}" for v in eff[i].tolist()) for i in range(eff.shape[0])
                )
            )  # fmt: skip
    lines += ["", "## Plots", "", *[f"![{f.stem}]({f.name})" for f in files]]
    return _write(out, doc, lines, files)


def _layer_means(layer: dict[str, Any]) -> dict[str, float]:
    out = {k: sum(layer[k]) / len(layer[k]) for k in ("neighbour", "self", "other_node", "rest")}
    lifts = [v for v in layer["lift"] if not math.isnan(v) and v > 0]
    out["lift (geo. mean)"] = math.exp(sum(map(math.log, lifts)) / len(lifts)) if lifts else math.nan
    for k in ("distance_corr", "token_distance_corr"):
        vals = [v for v in layer[k] if not math.isnan(v)]
        out[k] = sum(vals) / len(vals) if vals else math.nan
    return out


def write_graph_report(doc: dict[str, Any], out: str | Path) -> list[Path]:
    """Report of :func:`~attnzoo.analysis.studies.graph_study`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    models = list(doc["results"])
    fig, axes = plt.subplots(len(models), 2, figsize=(10.0, 3.4 * len(models)), squeeze=False)
    for m, name in enumerate(models):
        lift_ax, corr_ax = axes[m]
        for k, (enc, res) in enumerate(doc["results"][name].items()):
            means = [_layer_means(ly) for ly in res["layers"]]
            color = f"C{k}"
            lift_ax.plot([x["lift (geo. mean)"] for x in means], marker="o", color=color, label=enc)
            corr_ax.plot([x["distance_corr"] for x in means], marker="o", color=color, label=f"{enc}: hops")
            corr_ax.plot(
                [x["token_distance_corr"] for x in means], ls="--", color=color, label=f"{enc}: tokens"
            )
        lift_ax.axhline(1.0, color="grey", lw=0.8)
        lift_ax.set(title=f"{name}: neighbour lift (1 = none)", xlabel="layer", ylabel="lift")
        corr_ax.axhline(0.0, color="grey", lw=0.8)
        corr_ax.set(title=f"{name}: Spearman(attention, distance)", xlabel="layer", ylabel="rho")
        for ax in (lift_ax, corr_ax):
            ax.set_xticks(range(len(means)))
            ax.legend(fontsize=7)
    plot = _save(plt, fig, out / "graph_attention.png")
    cfg, training = doc["config"], doc["training"]
    model, data = cfg["model"], cfg["data"]
    lines = _head("Attention on graph-structured prompts", doc)
    lines += ["## What is measured", "", *_card_lines("graph_attention")]
    minilm = "all-MiniLM-L6-v2" in doc["results"]
    lines += _section(
        "Models",
        f"- `trained`: attnzoo `CausalLM` ({model['layers']} layers x {model['heads_per_layer']} heads, "
        f"width {model['width']}) trained here (seed {cfg['seed']}, {training['history'][-1]['step']} "
        f"steps) on edge queries `? u v` -> yes/no over graphs of {data['num_nodes']} nodes and "
        f"{data['num_edges']} edges in all three encodings; test accuracy "
        f"{training['test_accuracy']:.3f} (chance {training['chance']}). Causal: a node token sees only "
        "earlier tokens.\n"
        + ("- `all-MiniLM-L6-v2`: the pretrained sentence encoder (bidirectional), on the same graphs "
           "without the query.\n" if minilm else "- MiniLM was not run.\n")
        + f"- {cfg['num_prompts']} graphs per encoding and model.",
    )  # fmt: skip
    summary = []
    for name in models:
        for enc, res in doc["results"][name].items():
            means = [_layer_means(ly) for ly in res["layers"]]
            best = max(range(len(means)), key=lambda i: means[i]["lift (geo. mean)"])
            lift = means[best]["lift (geo. mean)"]
            summary.append({
                "model": name, "encoding": enc, "highest lift (layer)": f"{lift:.2f} ({best})",
                "mean Spearman with hops": sum(x["distance_corr"] for x in means) / len(means),
                "mean Spearman with tokens": sum(x["token_distance_corr"] for x in means) / len(means),
            })  # fmt: skip
    lines += _section(
        "Summary",
        metric_table(summary),
        "lift > 1: a node token attends more to each mention of a neighbour than to each mention of "
        "another node; a Spearman correlation below 0: attention falls with distance (hops in the graph, "
        "or tokens in the prompt).",
    )
    lines += ["## Results (per layer; shares averaged over heads and node-token queries)", ""]
    for name in models:
        for enc, res in doc["results"][name].items():
            rows = [{"layer": ly["layer"], **_layer_means(ly)} for ly in res["layers"]]
            lines += [f"### {name}, `{enc}`", "", f"Example: `{res['example']}`", "", metric_table(rows), ""]
    lines += ["## Plots", "", f"![{plot.stem}]({plot.name})"]
    return _write(out, doc, lines, [plot])


def write_arith_report(doc: dict[str, Any], out: str | Path) -> list[Path]:
    """Report of :func:`~attnzoo.analysis.studies.arith_study`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heads = doc["heads"]
    files = [
        plot_head_grid(_grid(heads["result_patch"]), out / "result_patch.png",
                       title="patch z at result positions (noising)", vmin=-1.0, vmax=0.0),
        plot_head_grid(_grid(heads["ablation"]), out / "ablation.png", title="mean-ablation",
                       vmin=-1.0, vmax=0.0),
    ]  # fmt: skip
    cfg, pre = doc["config"], doc["pretraining"]
    model = cfg["model"]
    selected = ", ".join(_head_name(h) for h in heads["selected"])
    lines = _head("Arithmetic heads and precise fine-tuning", doc)
    lines += ["## What is measured", "", *_card_lines("arithmetic_heads")]
    lines += _section(
        "Model and data",
        f"attnzoo `CausalLM` with `mhsa`, {model['layers']} layers x {model['heads_per_layer']} heads "
        f"({heads['total_heads']} heads), width {model['width']}, {model['parameters']:,} parameters; "
        f"pretrained here for {cfg['pretrain_steps']} steps on two-digit additions `a1 a2 + b1 b2 = r1 r2 "
        "r3` (8000 operand pairs; tested on 1000 held-out pairs, exact match of the three result digits) "
        f"mixed with the IOI-like task. After pretraining: addition exact match "
        f"{pre['addition_exact_match']:.3f}, IOI accuracy {pre['ioi_accuracy']:.3f}.",
    )
    lines += _section(
        "Arithmetic heads",
        f"Selected: {selected} = {len(heads['selected'])} of {heads['total_heads']} heads "
        f"({heads['fraction']:.1%}); top MLP by patching: block {heads['selected_mlps']} "
        f"(MLP patching effects per block: {', '.join(f'{v:+.2f}' for v in heads['mlp_patch'])}).",
    )
    lines += [
        metric_table(
            [
                {"head": _head_name((i, h)), "result-position patch": e,
                 "operand-position patch": heads["operand_patch"][i][h],
                 "mean-ablation": heads["ablation"][i][h]}
                for i, h, e in heads["ranking"][:8]
            ]
        ),
        "",
        "Joint mean-ablation of the selected heads (accuracy on the result digits the counterfactual "
        "changes; random: heads drawn from the others):",
        "",
    ]  # fmt: skip
    krows = [
        {"task": t, "accuracy": r["baseline"]["accuracy"], "selected ablated": r["ablated"]["accuracy"],
         "random ablated": r["control"]["accuracy"], "logit diff": r["baseline"]["logit_diff"],
         "selected: logit diff": r["ablated"]["logit_diff"], "random: logit diff": r["control"]["logit_diff"]}
        for t, r in doc["knockout"].items()
    ]  # fmt: skip
    lines += [metric_table(krows), "", "## Fine-tuning on addition only", ""]
    ft = [
        {
            "arm": "before (pretrained)",
            "addition exact match": pre["addition_exact_match"],
            "IOI accuracy": pre["ioi_accuracy"],
            "trainable parameters": "–",
            "frozen entries changed": "–",
        }
    ]
    ft += [
        {"arm": f"{name} ({'all' if r['heads'] == 'all' else ', '.join(_head_name(h) for h in r['heads'])}"
                + (f"; MLP {r['mlps']}" if r["mlps"] and r["mlps"] != "all" else "") + ")",
         "addition exact match": r["addition_exact_match"], "IOI accuracy": r["ioi_accuracy"],
         "trainable parameters": f"{r['trainable_parameters']:,}",
         "frozen entries changed": r["frozen_entries_changed"]}
        for name, r in doc["finetuning"].items()
    ]  # fmt: skip
    lines += [
        f"{cfg['finetune_steps']} steps on addition alone, the same budget for every arm (AdamW, lr 1e-3, no "
        "weight decay); the IOI accuracy measures what the fine-tuning forgets.",
        "",
        metric_table(ft),
        "",
        "## Plots",
        "",
        *[f"![{f.stem}]({f.name})" for f in files],
    ]
    return _write(out, doc, lines, files)
