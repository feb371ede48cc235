"""``python -m attnzoo.training.demo``: where it writes, what it states, how epsilon is chosen."""

from __future__ import annotations

import json
from pathlib import Path

from attnzoo.training.demo import main
from attnzoo.training.report import claims

ARGS = ["--quick", "--methods", "baseline,at,vat", "--steps", "1", "--eps-grid", "0.5,8", "--no-progress"]


def test_demo_writes_a_new_run_folder_and_states_its_command(tmp_path: Path):
    assert main([*ARGS, "--runs", str(tmp_path)]) == 0
    assert main([*ARGS, "--runs", str(tmp_path), "--seeds", "3"]) == 0
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(folders) == 2
    doc = json.loads((folders[0] / "results.json").read_text())
    report = (folders[0] / "report.md").read_text()
    assert "python -m attnzoo.training.demo --quick --methods baseline,at,vat" in report
    assert doc["command"] in report
    meta = doc["meta"]
    assert {"attnzoo", "torch", "python", "load_before", "load_after", "date"} <= set(meta)
    assert f"load average {meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after" in report
    assert f"attnzoo {meta['attnzoo']}, torch {meta['torch']}" in report
    assert {r["method"] for r in doc["runs"]} == {"baseline", "at", "vat"}
    for method in ("at", "vat"):
        trials = [s for s in doc["selection"] if s["method"] == method]
        assert [t["epsilon"] for t in trials] == [0.5, 8.0]
        best = max(trials, key=lambda t: (t["val_accuracy"], -t["epsilon"]))
        assert doc["chosen_epsilon"][method] == best["epsilon"]
    for run in doc["runs"]:
        assert 0 <= run["test_accuracy"] <= 1 and 0 <= run["normalised_entropy"] <= 1 + 1e-9
    assert json.loads((folders[1] / "results.json").read_text())["config"]["seeds"] == [3]


def test_demo_out_replaces_only_its_own_files(tmp_path: Path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "results.json").write_text("stale")
    (out / "notes.txt").write_text("kept")
    assert main([*ARGS, "--methods", "baseline", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["methods"] == ["baseline"]
    assert (out / "notes.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_demo_refuses_unknown_methods(tmp_path: Path, capsys):
    assert main([*ARGS, "--methods", "baseline,fgsm", "--runs", str(tmp_path)]) == 2
    assert "fgsm" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _run(method: str, seed: int, acc: float, pearson: float) -> dict[str, float | str | int]:
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": acc,
        "attacked_test_accuracy": acc - 0.1,
        "normalised_entropy": 0.5,
        "attention_gradient_pearson": pearson,
    }


def test_claims_say_where_the_numbers_disagree_with_the_papers():
    doc = {
        "config": {"methods": ["baseline", "at", "iat"], "eps_grid": [1.0, 2.0]},
        "runs": [
            _run("baseline", 0, 0.90, 0.1),
            _run("baseline", 1, 0.92, 0.1),
            _run("at", 0, 0.80, 0.3),
            _run("at", 1, 0.82, 0.3),
            _run("iat", 0, 0.905, 0.0),
            _run("iat", 1, 0.925, 0.0),
        ],
        "selection": [
            {"method": "at", "epsilon": 1.0, "val_accuracy": 0.9},
            {"method": "at", "epsilon": 2.0, "val_accuracy": 0.7},
            {"method": "iat", "epsilon": 1.0, "val_accuracy": 0.9},
            {"method": "iat", "epsilon": 2.0, "val_accuracy": 0.85},
        ],
    }
    lines = claims(doc)
    accuracy = [line for line in lines if "better test accuracy" in line]
    assert accuracy[0].startswith("- at:") and "disagrees, 0.810 vs 0.910." in accuracy[0]
    assert (
        accuracy[1].startswith("- iat:")
        and "inconclusive (within seed noise), 0.915 vs 0.910." in accuracy[1]
    )
    pearson = [line for line in lines if "gradient importance" in line]
    assert ": agrees" in pearson[0] and ": disagrees" in pearson[1]
    assert lines[-1].startswith("- iAT depends less on epsilon than AT (AT paper): agrees, ")
    assert "0.050 (iAT) vs 0.200 (AT)" in lines[-1]


def test_one_seed_gives_no_verdict():
    doc = {
        "config": {"methods": ["baseline", "at"], "eps_grid": [1.0]},
        "runs": [_run("baseline", 0, 0.90, 0.1), _run("at", 0, 0.95, 0.3)],
        "selection": [{"method": "at", "epsilon": 1.0, "val_accuracy": 0.9}],
    }
    lines = claims(doc)
    assert len(lines) == 4
    assert all(": inconclusive (one seed: no noise estimate), " in line for line in lines)
