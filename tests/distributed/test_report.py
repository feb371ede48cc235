"""``python -m attnzoo.distributed.report``: the document mixes are reproducible and fill exactly
``T`` tokens; the simulation covers every cell with every planner; the command (``--preset tiny``,
run as a subprocess under a deadline) writes a new run folder, never the committed report, whose
real gloo run sent exactly the bytes its plans predict and equals single-process attention."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnzoo.distributed._plan_sim import MIXES, PRESETS, document_lengths, simulate
from attnzoo.distributed.report import PRODUCED, main

DEADLINE_S = 300.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_mixes_fill_the_stream_and_depend_only_on_the_seed(mix: str) -> None:
    for total in (4096, 65536):
        lengths = document_lengths(mix, total, seed=1)
        assert sum(lengths) == total and min(lengths) >= 1
        assert lengths == document_lengths(mix, total, seed=1) != document_lengths(mix, total, seed=2)
    spec, lengths = MIXES[mix], document_lengths(mix, 1 << 20, seed=0)
    if spec.long_prob:  # the planted long tail is there
        assert sum(n >= spec.long_min for n in lengths) >= 0.5 * spec.long_prob * len(lengths)


def test_simulation_covers_every_cell_and_distca_balances_better_than_the_baselines() -> None:
    config = PRESETS["tiny"]
    rows = simulate(config)
    planners = ["local", "per_document", *(f"distca_c{c}" for c in config.min_chunks)]
    cells = {(r["mix"], r["tokens"], r["world"], r["seed"]) for r in rows}
    assert len(rows) == len(cells) * len(planners)
    for mix, total, world, seed in cells:
        key = (mix, total, world, seed)
        by = {r["planner"]: r for r in rows if (r["mix"], r["tokens"], r["world"], r["seed"]) == key}
        assert sorted(by) == sorted(planners)
        assert by["local"]["q_tokens"] == 0  # no query leaves its home without disaggregation
        for name in planners[2:]:
            assert by[name]["imbalance"] < min(by["local"]["imbalance"], by["per_document"]["imbalance"])


@pytest.mark.slow
def test_the_command_writes_a_new_run_folder_with_the_measured_report(tmp_path: Path) -> None:
    committed = ROOT / "reports" / "distributed" / "distributed.json"
    before = committed.read_bytes() if committed.exists() else None
    proc = subprocess.run(
        [sys.executable, "-m", "attnzoo.distributed.report", "--preset", "tiny"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "reports" / "distributed" / "runs").iterdir()
    assert sorted(p.name for p in run.iterdir()) == sorted(PRODUCED)
    assert (committed.read_bytes() if committed.exists() else None) == before
    doc = json.loads((run / "distributed.json").read_text())
    assert doc["command"] == "python -m attnzoo.distributed.report --preset tiny"
    assert "`python -m attnzoo.distributed.report --preset tiny`" in (run / "distributed.md").read_text()
    assert (run / "distributed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (real,) = doc["real"]
    assert real["config"]["world"] == 2
    for name, planner in real["planners"].items():
        assert planner["allclose"], name
        assert planner["sent_bytes"]["forward"] == planner["predicted_bytes"]["forward"], name
        assert planner["sent_bytes"]["total"] == planner["predicted_bytes"]["total"], name
        assert len(planner["time_ms_min_per_rank"]) == 2
    assert real["planners"]["distca"]["sent_bytes"]["total"] > 0
    assert real["planners"]["distca"]["imbalance"] < real["planners"]["local"]["imbalance"]


@pytest.mark.parametrize("worlds", ["0", "3", "a,b", ","])
def test_bad_real_worlds_is_a_clear_error(worlds: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--preset", "tiny", "--real-worlds", worlds, "--runs", "/nonexistent/never"]) == 2
    assert "--real-worlds must list positive ints dividing 512" in capsys.readouterr().err
