"""The Markdown report of ``python -m attnzoo.training.demo``, with the papers' claims checked
against the measured numbers (so the committed report says where it disagrees with them)."""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["claims", "report_markdown"]

_COLUMNS = (
    ("test_accuracy", "test acc"),
    ("attacked_test_accuracy", "test acc, attacked"),
    ("normalised_entropy", "entropy / log N"),
    ("attention_gradient_pearson", "Pearson(attn, grad)"),
    ("val_accuracy", "val acc"),
    ("train_seconds", "train s"),
)


def _values(doc: dict[str, Any], method: str, key: str) -> list[float]:
    return [r[key] for r in doc["runs"] if r["method"] == method]


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) < 2 else f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def _compare(doc: dict[str, Any], method: str, key: str, higher: bool) -> str:
    """``agrees`` / ``disagrees`` with the claim that ``method`` beats the baseline on ``key`` (means
    over seeds), or ``inconclusive`` when the gap is at most the larger of the two seed standard
    deviations or when either side has one seed (no noise estimate); then the numbers."""
    a, b = _values(doc, method, key), _values(doc, "baseline", key)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if min(len(a), len(b)) < 2:
        verdict = "inconclusive (one seed: no noise estimate)"
    elif abs(diff) <= max(statistics.stdev(a), statistics.stdev(b)):
        verdict = "inconclusive (within seed noise)"
    else:
        verdict = "agrees" if (diff > 0) == higher else "disagrees"
    return f"{verdict}, {statistics.fmean(a):.3f} vs {statistics.fmean(b):.3f}"


def _eps_spread(doc: dict[str, Any], method: str) -> float:
    vals = [s["val_accuracy"] for s in doc["selection"] if s["method"] == method]
    return max(vals) - min(vals)


def claims(doc: dict[str, Any]) -> list[str]:
    """One line per claim of the papers that this run can test: ``agrees``, ``disagrees`` or
    ``inconclusive``."""
    methods = [m for m in doc["config"]["methods"] if m != "baseline"]
    if "baseline" not in doc["config"]["methods"]:
        return ["- (no baseline run: nothing to compare)"]
    lines = []
    checks = (
        ("test_accuracy", True, "better test accuracy than training without (both papers)"),
        ("attacked_test_accuracy", True, "more robust to perturbed attention (AT paper's motivation)"),
        ("normalised_entropy", False, "sharper, 'clearer' attention, i.e. lower entropy (VAT paper)"),
        (
            "attention_gradient_pearson",
            True,
            "attention agrees more with gradient importance (AT paper; there word-level, here patches)",
        ),
    )
    for key, higher, claim in checks:
        for m in methods:
            lines.append(f"- {m}: {claim}: {_compare(doc, m, key, higher)}.")
    if {"at", "iat"} <= set(methods) and len(doc["config"]["eps_grid"]) > 1:
        at, iat = _eps_spread(doc, "at"), _eps_spread(doc, "iat")
        verdict = "agrees" if iat < at else "disagrees"
        lines.append(
            f"- iAT depends less on epsilon than AT (AT paper): {verdict}, validation accuracy spread over "
            f"the grid {iat:.3f} (iAT) vs {at:.3f} (AT)."
        )
    return lines


def report_markdown(doc: dict[str, Any], command: str) -> str:
    """The Markdown report of a :func:`attnzoo.training.demo.run_demo` document, stating the command
    that made it."""
    cfg = doc["config"]
    chosen = ", ".join(f"{m} {e:g}" for m, e in doc["chosen_epsilon"].items() if m != "baseline")
    meta = doc["meta"]
    lines = [
        f"# Attention AT / iAT / VAT on digits ({cfg['mechanism']} ViTTiny)",
        "",
        f"Made by `{command}` in {meta['seconds_total'] / 60:.1f} min on {meta['date']} (attnzoo "
        f"{meta['attnzoo']}, torch {meta['torch']}, Python {meta['python']}, {cfg['threads']} thread(s) on "
        f"{meta['cpus']} CPUs; 1-minute load average {meta['load_before'][0]:.2f} before, "
        f"{meta['load_after'][0]:.2f} after: train s is wall time on a shared machine).",
        "",
        f"- Seeds {', '.join(map(str, cfg['seeds']))}; {cfg['steps']} AdamW steps of batch "
        f"{cfg['batch_size']}, lr {cfg['lr']} (warm-up {cfg['warmup']}, cosine), weight decay "
        f"{cfg['weight_decay']}, lambda {cfg['lam']}; VAT xi {cfg['xi']}, {cfg['n_power']} power "
        "iteration(s); the backbone is the `digits` task's `cpu` preset (`attnzoo eval digits`).",
        f"- Data: sklearn digits, {doc['data']['train_used']} training images, {doc['data']['val']} "
        f"validation images held out of the training split, {doc['data']['num_test']} test images.",
        f"- epsilon of each method was chosen from {tuple(cfg['eps_grid'])} by **validation** accuracy "
        f"with seed {cfg['seeds'][0]} (the test split chose nothing): {chosen or '-'}.",
        "- epsilon is the L2 norm of the perturbation of one attention call's scores (heads x queries x "
        "keys) per image. attacked: every attention call's scores get AT's r_adv (from the test labels) "
        f"of norm {cfg['attack_eps']:g}. entropy: mean row entropy of all attention matrices over log N. "
        "Pearson: the last layer's attention received per patch (mean over heads and queries) against "
        "the patch token's gradient norm of the predicted logit, averaged over test images.",
        "",
        "| method | epsilon | " + " | ".join(label for _, label in _COLUMNS) + " |",
        "|---|---|" + "---|" * len(_COLUMNS),
    ]
    for method in cfg["methods"]:
        cells = [_cell(_values(doc, method, key)) for key, _ in _COLUMNS]
        lines.append(f"| {method} | {doc['chosen_epsilon'][method]:g} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± standard deviation over seeds.", "", "## The papers' claims on this task", ""]
    lines += claims(doc)
    lines += [
        "",
        "Left out: the papers' NLP tasks and BiLSTM models, Kendall's tau (Pearson only), human-rationale "
        "agreement and the semi-supervised (unlabeled data) setting of VAT"
        + (
            "; iVAT is implemented (`--methods ...,ivat`) but not in this run."
            if "ivat" not in cfg["methods"]
            else "."
        ),
        "",
        "## Validation accuracy over the epsilon grid (first seed)",
        "",
        "| method | epsilon | val acc |",
        "|---|---|---|",
    ]
    lines += [f"| {s['method']} | {s['epsilon']:g} | {s['val_accuracy']:.3f} |" for s in doc["selection"]]
    return "\n".join(lines) + "\n"
