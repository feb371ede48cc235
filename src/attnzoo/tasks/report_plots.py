"""The two plots of an eval report: accuracy over training of the chosen runs (validation solid,
test dotted; older documents: test), and test accuracy against forward latency with the Pareto
front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnzoo.tasks.selection import selected_runs, selection_split

__all__ = ["pareto_front", "plot_curves", "plot_pareto"]


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


def plot_curves(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    validation = selection_split(doc) == "validation"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, Any] = {}
    for run in selected_runs(doc):
        if run["status"] != "ok":
            continue
        name = run["mechanism"]
        label = None if name in colours else name
        steps = [h["step"] for h in run["history"]]
        key = "val_accuracy" if validation else "accuracy"
        (line,) = ax.plot(
            steps, [h[key] for h in run["history"]], marker="o", ms=3, label=label, color=colours.get(name)
        )
        colours.setdefault(name, line.get_color())
        if validation:
            ax.plot(steps, [h["test_accuracy"] for h in run["history"]], color=colours[name], ls=":", lw=1)
    target = doc["task"]["budget"].get("target")
    if target is not None:
        ax.axhline(target, color="grey", ls=":", lw=1)
    chance = doc["task"].get("chance")
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=0.8, label="chance")
    t = doc["task"]
    what = "validation (solid) and test (dotted)" if validation else "test"
    ax.set_title(f"{t['name']} ({t['preset']}): {what} accuracy over training", fontsize=10)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy" if validation else "test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(doc: dict[str, Any], rows: list[dict[str, Any]], path: Path, source: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    pts = [
        (r["mechanism"], r["fwd_ms"], r["test_accuracy"])
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
    validation = selection_split(doc) == "validation"
    ax.set_ylabel("test accuracy (chosen on validation)" if validation else "best test accuracy")
    ax.set_title(f"{t['name']} ({t['preset']}): quality vs cost")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return front
