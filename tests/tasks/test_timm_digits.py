"""``attnzoo eval-timm``: timm's ViT-Tiny on digits per 2-D token mixer, run end to end in its quick
configuration, and where it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import attnzoo
from attnzoo.cli import main
from attnzoo.tasks.timm_digits import BASELINE, GEMM_N, PRESETS

pytest.importorskip("timm")

TWO_D = [n for n in attnzoo.list_mechanisms("token_mixer") if attnzoo.card(n).spatial_dims == 2]


def test_quick_run_trains_and_times_every_2d_mixer_beside_timm_attention(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["eval-timm", "--quick", "--no-progress", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    quick = PRESETS["quick"]
    assert doc["config"]["preset"] == "quick" and doc["config"]["timm_model"] == "vit_tiny_patch16_224"
    assert [r["label"] for r in doc["contenders"]] == [BASELINE, *TWO_D]
    for row in doc["contenders"]:
        assert [run["seed"] for run in row["runs"]] == list(quick.seeds)
        assert all(
            0.0 <= run["test_accuracy"] <= 1.0 and run["steps"] == quick.max_steps for run in row["runs"]
        )
        assert row["step_ms"]["runs"] == quick.timing_repeats
        assert 0 < row["step_ms"]["min"] <= row["step_ms"]["median"]
        assert row["params"] > 0 and row["step_flops"] > 0
    assert doc["gemm"]["n"] == GEMM_N and doc["gemm"]["gflops"] > 0
    assert len(doc["meta"]["load_average_before"]) == len(doc["meta"]["load_average_after"]) == 3
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(doc["contenders"])  # header + one row each
    assert all(f"| `{name}` |" in report for name in TWO_D)


def test_without_out_every_run_gets_a_new_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "reports" / "timm" / "vit_tiny_digits"
    committed.mkdir(parents=True)
    (committed / "report.md").write_text("committed")
    for _ in range(2):
        assert main(["eval-timm", "--quick", "--no-progress", "--mechanisms", "vig"]) == 0
    runs = sorted((tmp_path / "reports" / "timm" / "runs").iterdir())
    assert len(runs) == 2
    assert all({p.name for p in run.iterdir()} == {"results.json", "report.md"} for run in runs)
    assert (committed / "report.md").read_text() == "committed"


@pytest.mark.parametrize(
    ("mechanisms", "message"), [("gla", "causal only"), ("neighbourhood_attention_2d", "closest")]
)
def test_a_mechanism_that_cannot_run_fails_before_training(
    mechanisms: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval-timm", "--quick", "--mechanisms", mechanisms, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
