"""Plots and tables for attention analysis: per-head heatmaps, per-layer sink bars, metric tables.

All plotting functions write a PNG with matplotlib's non-interactive ``Agg`` backend and return
the path; :func:`metric_table` renders rows as a Markdown table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["metric_table", "plot_head_grid", "plot_head_heatmaps", "plot_sink_bars"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (110 dpi), close it and return the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_head_heatmaps(
    probs: torch.Tensor,
    path: str | Path,
    *,
    tokens: Sequence[str] | None = None,
    title: str = "",
    max_cols: int = 4,
) -> Path:
    """One heatmap per head of a single attention map ``probs (h, N_q, N_k)``.

    Args:
        tokens: labels of the ``N`` positions (shown when ``N <= 40``).
    """
    if probs.ndim != 3:
        raise ValueError(f"probs must be (h, N_q, N_k), got shape {tuple(probs.shape)}")
    if tokens is not None and len(tokens) != probs.shape[-1]:
        raise ValueError(f"{len(tokens)} tokens given for {probs.shape[-1]} key positions")
    plt = _pyplot()
    heads = probs.shape[0]
    cols = min(max_cols, heads)
    rows = math.ceil(heads / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    data = probs.detach().float().cpu().numpy()
    for i, ax in enumerate(axes.flat):
        if i >= heads:
            ax.axis("off")
            continue
        ax.imshow(data[i], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"head {i}", fontsize=9)
        if tokens is not None and len(tokens) <= 40:
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def plot_sink_bars(
    shares: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    layer_labels: Sequence[str] | None = None,
    title: str = "Attention share per layer",
) -> Path:
    """Stacked bars: per layer, the share of attention going to each token class.

    Args:
        shares: ``{class: [share per layer]}``, classes stacked in the given order.
    """
    if not shares:
        raise ValueError("shares is empty")
    lengths = {len(v) for v in shares.values()}
    if len(lengths) != 1:
        raise ValueError(f"every class needs one share per layer; got lengths {sorted(lengths)}")
    n = lengths.pop()
    labels = list(layer_labels) if layer_labels is not None else [str(i) for i in range(n)]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * n, 3.8))
    bottom = [0.0] * n
    for name, values in shares.items():
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylim(0, 1)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of attention")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(plt, fig, path)


def plot_head_grid(
    values: torch.Tensor,
    path: str | Path,
    *,
    title: str = "",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    fmt: str = "{:.2f}",
) -> Path:
    """Annotated heatmap of one number per head, ``values (layers, heads)``."""
    if values.ndim != 2:
        raise ValueError(f"values must be (layers, heads), got shape {tuple(values.shape)}")
    plt = _pyplot()
    layers, heads = values.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * heads, 0.9 + 0.45 * layers))
    data = values.detach().float().cpu().numpy()
    im = ax.imshow(data, cmap="magma", vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(layers):
        for j in range(heads):
            ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=6, color="cyan")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(plt, fig, path)


def metric_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3
) -> str:
    """Render ``rows`` (dicts) as a Markdown table; floats are rounded to ``digits``."""
    if not rows:
        raise ValueError("rows is empty")
    columns = list(columns) if columns is not None else list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
