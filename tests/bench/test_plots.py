"""Plots read: the overlap check finds overlapping texts, and the cost and Pareto figures have none
even when the sizes, names and points are crowded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest

from attnzoo.bench.plots import (
    PANEL_LINES,
    Point,
    Series,
    chunk_panels,
    cost_figure,
    overlapping_texts,
    pareto_figure,
    save,
)
from attnzoo.bench.report import cost_panels, write_plots


def test_overlap_check_finds_overlapping_labels_and_tick_labels() -> None:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.text(0.5, 0.5, "first label", transform=ax.transAxes)
    ax.text(0.52, 0.5, "second label", transform=ax.transAxes)
    assert ("'first label'", "'second label'") in overlapping_texts(fig)
    ax.clear()
    ax.set_xscale("log")
    ax.plot([8192, 9216], [1, 2])
    ax.set_xticks([8192, 9216], ["8192", "9216"])
    assert any(a.startswith("tick") and b.startswith("tick") for a, b in overlapping_texts(fig))
    plt.close(fig)


def test_overlap_check_finds_a_legend_over_another_panel() -> None:
    fig, (top, _bottom) = plt.subplots(2, 1, figsize=(4, 4))
    top.plot([1, 2], [1, 2], label="a line")
    top.legend(loc="upper left", bbox_to_anchor=(0.0, -0.6))
    assert any("panel" in b for _, b in overlapping_texts(fig))
    plt.close(fig)


def _bench_doc(n_seq: int, n_grid: int) -> dict[str, Any]:
    """A benchmark document of many token mixers, sequences and grids, at the full preset's
    crowded token counts (3136 beside 4096, 8192 beside 9216)."""
    seq = [256, 512, 1024, 2048, 4096, 8192, 16384]
    grid = [(14, 14), (28, 28), (56, 56), (64, 64), (96, 96), (128, 128)]
    results = []
    for i in range(n_seq + n_grid):
        sizes = [[n] for n in seq] if i < n_seq else [list(g) for g in grid]
        rows = []
        for s in sizes:
            n = s[0] * (s[1] if len(s) > 1 else 1)
            ms = 1e-4 * (i + 1) * n ** (1 + i / 20)
            rows.append({"size": s, "n": n, "status": "ok", "fwd_ms": {"median": ms}, "peak_fwd_mb": n / 1e3})
        results.append(
            {
                "name": f"a_rather_long_mechanism_name_{i}[variant]",
                "mechanism": f"m{i}",
                "family": "token_mixer",
                "spatial_dims": 1 if i < n_seq else 2,
                "sizes": rows,
            }
        )
    return {"results": results}


def test_crowded_cost_panels_split_and_read() -> None:
    doc = _bench_doc(20, 9)
    panels = cost_panels(doc, "token_mixer", ("fwd_ms", "peak_fwd_mb"))
    assert len(panels) == 3 + 2 and all(len(p.series) <= PANEL_LINES for p in panels)
    assert [p.title for p in panels][:1] == ["token_mixer, sequences (1/3)"]
    metrics = [("fwd_ms", "latency (ms)"), ("peak_fwd_mb", "memory (MiB)")]
    fig = cost_figure(panels, metrics, xlabel="tokens N")
    assert overlapping_texts(fig) == []
    plt.close(fig)


def test_write_plots_of_a_crowded_run_has_no_overlap(tmp_path: Path) -> None:
    doc = _bench_doc(12, 6)
    assert write_plots(doc, tmp_path) == ["latency.png", "memory.png"]
    fig = cost_figure(cost_panels(doc, "token_mixer", ("fwd_ms",)), [("fwd_ms", "ms")], xlabel="N")
    assert overlapping_texts(fig) == []
    plt.close(fig)
    assert (tmp_path / "latency.png").stat().st_size > 0


@pytest.mark.parametrize("count", [3, 14])
def test_pareto_labels_never_overlap(tmp_path: Path, count: int) -> None:
    points = [
        Point(f"mechanism_{i}", 10.0 + 0.3 * i, 0.9 + 0.002 * (i % 4), 0.01, front=i % 3 == 0)
        for i in range(count)
    ]
    fig = pareto_figure([("task (preset)", "accuracy", points)], xlabel="latency (ms)", title="family")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    legend = fig.axes[0].get_legend()
    listed = [t.get_text() for t in legend.get_texts()] if legend else []
    assert all(any(text.startswith(p.label) for text in texts + listed) for p in points)
    assert save(fig, tmp_path / "pareto.png") == []


def test_chunk_panels_titles() -> None:
    series = [Series(str(i), [1.0], {"k": [1.0]}) for i in range(PANEL_LINES + 1)]
    assert [p.title for p in chunk_panels("f", series)] == ["f (1/2)", "f (2/2)"]
    assert [p.title for p in chunk_panels("f", series[:2])] == ["f"]
