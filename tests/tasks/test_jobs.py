"""Run folders, the journal and ``--resume`` (issue 15, parts 3 and 4): committed reports change
only with ``--out``, a replaced report keeps no stale file, every task repeats exactly for a seed,
and an eval killed midway resumes from the runs it finished."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnzoo.runs import new_run_dir, replace_outputs
from attnzoo.tasks import TASKS, run_eval
from attnzoo.tasks.cli import add_eval_parser
from attnzoo.tasks.jobs import JOURNAL, Journal, JournalMismatchError

_MECHANISM = {"sequence": "mhsa", "image": "mhsa", "mil": "attention_mil"}
_STRIP = ("train_seconds", "seconds")


def _numbers(run: dict) -> dict:
    """A run without its wall-clock fields."""
    out = {k: v for k, v in run.items() if k not in _STRIP}
    out["history"] = [{k: v for k, v in h.items() if k not in _STRIP} for h in run.get("history", [])]
    return out


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_repeats_exactly_for_a_seed(task: str) -> None:
    mechanism = _MECHANISM[TASKS[task].kind]
    a, b = (run_eval(task, [mechanism], preset="tiny", steps=3, seeds=[1], progress=False) for _ in range(2))
    assert a["runs"][0]["status"] == "ok"
    assert _numbers(a["runs"][0]) == _numbers(b["runs"][0])


def test_journal_resumes_the_runs_it_holds_and_trains_the_rest(tmp_path: Path) -> None:
    journal = tmp_path / JOURNAL
    kwargs = {"preset": "tiny", "steps": 3, "seeds": [0, 1], "progress": False}
    full = run_eval("induction_heads", ["mhsa"], journal=journal, **kwargs)
    lines = journal.read_text().splitlines()
    assert len(lines) == 3 and "config" in json.loads(lines[0])
    kept = {**json.loads(lines[1]), "marker": "from the journal"}
    journal.write_text(f"{lines[0]}\n{json.dumps(kept)}\n")  # as if killed after the first run
    resumed = run_eval("induction_heads", ["mhsa"], journal=journal, **kwargs)
    assert resumed["runs"][0]["marker"] == "from the journal"  # reused, not retrained
    assert "marker" not in resumed["runs"][1]
    assert [_numbers(r) for r in resumed["runs"]] == [_numbers(r) | (
        {"marker": "from the journal"} if i == 0 else {}) for i, r in enumerate(full["runs"])]
    assert len(journal.read_text().splitlines()) == 3


def test_journal_refuses_another_configuration(tmp_path: Path) -> None:
    journal = tmp_path / JOURNAL
    run_eval("induction_heads", ["mhsa"], preset="tiny", steps=2, progress=False, journal=journal)
    with pytest.raises(JournalMismatchError, match=r"differs in \['budget'\]"):
        run_eval("induction_heads", ["mhsa"], preset="tiny", steps=3, progress=False, journal=journal)
    with pytest.raises(JournalMismatchError, match="preset"):
        Journal(journal, {"task": "induction_heads", "preset": "cpu"})


def test_run_folders_are_new_and_replace_outputs_removes_only_stale_outputs(tmp_path: Path) -> None:
    a, b = new_run_dir(tmp_path), new_run_dir(tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    for name in ("results.json", "pareto.png", "notes.txt"):
        (a / name).write_text("x")
    removed = replace_outputs(a, [a / "results.json"], ("results.json", "pareto.png", "report.md"))
    assert removed == [a / "pareto.png"]
    assert sorted(p.name for p in a.iterdir()) == ["notes.txt", "results.json"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnzoo")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _eval(*argv: str) -> int:
    args = _parser().parse_args(["eval", *argv])
    return args.func(args)


def test_cli_writes_a_new_folder_unless_out_and_out_replaces(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    base = ["induction_heads", "--preset", "tiny", "--steps", "2", "--no-progress", "--runs", str(runs)]
    assert _eval(*base) == 0
    (folder,) = (runs / "induction_heads").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["accuracy.png", "report.md", "results.json"]
    assert _eval(*base) == 0
    assert len(list((runs / "induction_heads").iterdir())) == 2  # never the same folder twice
    out = tmp_path / "committed"
    out.mkdir()
    (out / "pareto.png").write_text("from an earlier run with --bench")
    (out / "README.txt").write_text("not an eval output")
    assert _eval(*base, "--out", str(out)) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.txt", "accuracy.png", "report.md", "results.json"]


def test_cli_resume_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["induction_heads", "--preset", "tiny", "--no-progress", "--runs", str(tmp_path / "runs")]
    assert _eval(*base, "--resume", str(tmp_path)) == 2
    assert f"no {JOURNAL} there" in capsys.readouterr().out
    assert _eval(*base, "--resume", str(tmp_path), "--out", str(tmp_path)) == 2
    assert "not both" in capsys.readouterr().out
    assert _eval(*base, "--preset", "huge") == 2
    assert not (tmp_path / "runs" / "induction_heads").exists() or not any(
        (tmp_path / "runs" / "induction_heads").iterdir()
    )


@pytest.mark.slow
def test_an_eval_killed_midway_resumes_from_what_it_finished(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "attnzoo.cli", "eval", "mqar", "--preset", "tiny", "--mechanisms", "mhsa",
            "--seeds", "0,1,2,3", "--steps", "100", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / JOURNAL
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the eval ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    finished = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert 1 <= len(finished) < 4 and not (out / "results.json").exists()
    resume = [*argv[:-2], "--resume", str(out)]
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1, 2, 3] and not journal.exists()
    for before in finished:
        assert runs[before["seed"]] == before  # reused exactly, wall-clock fields included
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses ran with one thread
    try:
        fresh = run_eval("mqar", ["mhsa"], preset="tiny", seeds=[0, 1, 2, 3], steps=100, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [_numbers(r) for r in runs] == [_numbers(r) for r in fresh["runs"]]
