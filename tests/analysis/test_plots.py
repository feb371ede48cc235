"""Analysis plots write PNGs; metric tables render Markdown."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnzoo.analysis.plots import metric_table, plot_head_grid, plot_head_heatmaps, plot_sink_bars


def test_plots_write_pngs(tmp_path: Path) -> None:
    probs = torch.softmax(torch.randn(3, 5, 5), -1)
    files = [
        plot_head_heatmaps(probs, tmp_path / "h.png", tokens=list("abcde"), title="t"),
        plot_sink_bars({"[CLS]": [0.5, 0.2], "other": [0.5, 0.8]}, tmp_path / "s.png"),
        plot_head_grid(torch.rand(2, 3), tmp_path / "g.png", title="g"),
    ]
    for f in files:
        assert f.exists() and f.read_bytes()[:4] == b"\x89PNG"


def test_plot_inputs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probs"):
        plot_head_heatmaps(torch.rand(5, 5), tmp_path / "x.png")
    with pytest.raises(ValueError, match="tokens"):
        plot_head_heatmaps(torch.rand(1, 5, 5), tmp_path / "x.png", tokens=["a"])
    with pytest.raises(ValueError, match="one share per layer"):
        plot_sink_bars({"a": [0.1], "b": [0.1, 0.2]}, tmp_path / "x.png")


def test_metric_table() -> None:
    md = metric_table(
        [{"layer": 0, "share": 0.12345, "gap": float("nan")}, {"layer": 1, "share": 1.0, "gap": 2.0}]
    )
    assert md.splitlines() == [
        "| layer | share | gap |",
        "|---|---|---|",
        "| 0 | 0.123 | – |",
        "| 1 | 1.000 | 2.000 |",
    ]
