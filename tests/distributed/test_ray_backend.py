"""``--backend ray`` (issue 19 part 4): on a local Ray instance, an eval sweep gives the local pool's
results for a seed, a job that fails once (its worker raised, or died) is retried and succeeds, one
that keeps failing is named while the rest are journaled, an interrupted sweep resumes from its
journal and trains only the rest, and bench distributes whole families. Without Ray, the local pool
needs no Ray and ``--backend ray`` names the ``distributed`` extra.

Every test of this module shares one Ray instance (2 CPUs) and one xdist worker."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from attnzoo.bench.runner import BenchConfig, run_benchmarks
from attnzoo.cli import main
from attnzoo.distributed.ray_backend import RayBackend
from attnzoo.tasks import get_task, run_eval, train_one
from attnzoo.tasks.cli import add_eval_parser
from attnzoo.tasks.jobs import JOURNAL, Job, JobFailedError, Journal, execute

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.xdist_group("ray")

_STRIP = ("train_seconds", "seconds")
_TASK = "induction_heads"


@pytest.fixture(scope="module", autouse=True)
def _ray_instance() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _numbers(run: dict[str, Any]) -> dict[str, Any]:
    """A run without its wall-clock fields."""
    out = {k: v for k, v in run.items() if k not in _STRIP}
    out["history"] = [{k: v for k, v in h.items() if k not in _STRIP} for h in run.get("history", [])]
    return out


def _attempts(folder: Path, seed: int) -> int:
    path = folder / f"seed{seed}"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _hooked_train(
    folder: str, fail: dict[int, tuple[str, int]], data: Any, preset: Any, mechanism: str, **kwargs: Any
) -> dict[str, Any]:
    """``train_one`` that logs each attempt of a seed in ``folder`` and fails the first ``n``
    attempts of the seeds in ``fail`` (``{seed: (how, n)}``): ``raise`` an exception or ``die``
    (the worker process exits, as if killed)."""
    seed = kwargs["seed"]
    with (Path(folder) / f"seed{seed}").open("a") as f:
        f.write("attempt\n")
    how, n = fail.get(seed, ("", 0))
    if _attempts(Path(folder), seed) <= n:
        if how == "die":
            os._exit(1)
        raise OSError(f"injected failure of seed {seed}")
    return train_one(data, preset, mechanism, **kwargs)


def _execute(jobs: list[Job], train: Any, backend: RayBackend, journal: Journal | None = None) -> list[dict]:
    preset = get_task(_TASK).preset("tiny")
    return execute(
        _TASK,
        "tiny",
        preset,
        jobs,
        train,
        workers=1,
        threads=1,
        journal=journal,
        progress=False,
        backend=backend,
    )


def _jobs(seeds: range) -> list[Job]:
    budget = replace(get_task(_TASK).preset("tiny").budget, steps=2)
    return [Job("mhsa", seed, budget) for seed in seeds]


def test_a_ray_sweep_gives_the_local_pool_results_for_a_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # 2 jobs get 1 thread each, on any machine
    kwargs = {
        "preset": "tiny",
        "steps": 2,
        "seeds": [0, 1],
        "lrs": [3e-3, 1e-2],
        "jobs": 2,
        "progress": False,
    }
    local = run_eval("mqar", ["mhsa", "based"], **kwargs)
    distributed = run_eval("mqar", ["mhsa", "based"], backend=RayBackend(), **kwargs)
    assert (local["meta"]["backend"], distributed["meta"]["backend"]) == ("local", "ray")
    assert distributed["meta"]["threads"] == local["meta"]["threads"] == 1
    assert all(r["status"] == "ok" for r in distributed["runs"]) and len(distributed["runs"]) == 8
    assert [_numbers(r) for r in distributed["runs"]] == [_numbers(r) for r in local["runs"]]
    assert distributed["task"] == local["task"]


def test_a_job_that_fails_once_is_retried_and_succeeds(tmp_path: Path) -> None:
    train = functools.partial(_hooked_train, str(tmp_path), {0: ("raise", 1), 1: ("die", 1)})
    runs = _execute(_jobs(range(3)), train, RayBackend(retries=1))
    assert [(r["seed"], r["status"]) for r in runs] == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert [_attempts(tmp_path, seed) for seed in range(3)] == [2, 2, 1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        data = get_task(_TASK).generate("tiny", seed=0)
        again = train_one(
            data,
            get_task(_TASK).preset("tiny"),
            "mhsa",
            seed=0,
            budget=_jobs(range(1))[0].budget,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert _numbers(runs[0]) == _numbers(again)  # the retried run is the run


def test_a_job_that_keeps_failing_is_named_and_the_others_are_journaled(tmp_path: Path) -> None:
    train = functools.partial(_hooked_train, str(tmp_path), {1: ("raise", 99)})
    journal = Journal(tmp_path / JOURNAL, {"task": _TASK})
    with pytest.raises(
        JobFailedError,
        match=r"1 run\(s\) failed: mhsa \(seed 1, lr [0-9.e-]+\): OSError: "
        "injected failure of seed 1",
    ) as info:
        _execute(_jobs(range(3)), train, RayBackend(retries=2), journal)
    assert list(info.value.errors) == [1]
    assert [_attempts(tmp_path, seed) for seed in range(3)] == [1, 3, 1]  # 1 + 2 retries
    assert sorted(run["seed"] for run in Journal(tmp_path / JOURNAL, {"task": _TASK}).runs.values()) == [0, 2]


class _Interrupted(Exception):
    """Stands for the driver being stopped (Ctrl-C, a kill) between two finished jobs."""


class _StopAfter(Journal):
    """A journal whose driver stops once ``k`` runs are recorded."""

    def __init__(self, path: Path, config: dict[str, Any], k: int) -> None:
        super().__init__(path, config)
        self.k = k

    def record(self, run: dict[str, Any]) -> None:
        super().record(run)
        if len(self.runs) == self.k:
            raise _Interrupted


def test_an_interrupted_ray_sweep_resumes_and_runs_only_the_rest(tmp_path: Path) -> None:
    path, before, logs = tmp_path / JOURNAL, tmp_path / "before", tmp_path / "resume"
    before.mkdir()
    logs.mkdir()  # the resume logs its own attempts, apart from the jobs the interrupt cut short
    jobs = _jobs(range(4))
    with pytest.raises(_Interrupted):
        _execute(
            jobs,
            functools.partial(_hooked_train, str(before), {}),
            RayBackend(),
            _StopAfter(path, {"task": _TASK}, k=2),
        )
    finished = {run["seed"]: run for run in Journal(path, {"task": _TASK}).runs.values()}
    assert len(finished) == 2
    train = functools.partial(_hooked_train, str(logs), {})
    runs = _execute(jobs, train, RayBackend(), Journal(path, {"task": _TASK}))
    assert [r["seed"] for r in runs] == [0, 1, 2, 3] and all(r["status"] == "ok" for r in runs)
    assert [_attempts(logs, seed) for seed in range(4)] == [0 if s in finished else 1 for s in range(4)]
    assert all(runs[seed] == run for seed, run in finished.items())  # reused exactly
    assert len(path.read_text().splitlines()) == 1 + 4


def _eval(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="attnzoo")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


def test_cli_backend_ray_resumes_a_run_folder_started_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # 2 jobs get 1 thread each, on any machine
    folder = tmp_path / "run"
    kwargs = {"preset": "tiny", "steps": 2, "seeds": [0, 1], "jobs": 2, "progress": False}
    run_eval(_TASK, ["mhsa"], journal=folder / JOURNAL, **kwargs)  # on the local pool
    header, *lines = (folder / JOURNAL).read_text().splitlines()
    local = {run["seed"]: run for run in map(json.loads, lines)}
    kept = {**local[0], "marker": "from the journal"}
    (folder / JOURNAL).write_text(f"{header}\n{json.dumps(kept)}\n")  # as if killed after seed 0
    argv = [_TASK, "--preset", "tiny", "--mechanisms", "mhsa", "--steps", "2", "--seeds", "0,1"]
    argv += ["--jobs", "2", "--no-progress", "--resume", str(folder), "--backend", "ray", "--ray-retries=1"]
    assert _eval(*argv) == 0
    doc = json.loads((folder / "results.json").read_text())
    assert doc["meta"]["backend"] == "ray" and not (folder / JOURNAL).exists()
    assert doc["runs"][0] == kept  # reused, not retrained
    assert "marker" not in doc["runs"][1] and _numbers(doc["runs"][1]) == _numbers(local[1])


def test_bench_on_ray_measures_each_family_in_one_job() -> None:
    config = BenchConfig(
        seq_sizes=(16,), grid_sizes=((4, 4),), warmup=0, repeats=1, budget_s=0.0, timeout_s=120
    )
    names = ["se", "mhsa", "eca"]
    local = run_benchmarks(names, config, progress=False)
    distributed = run_benchmarks(names, config, progress=False, backend=RayBackend())
    groups = distributed["meta"]["backend"]["groups"]
    assert [(g["family"], g["mechanisms"]) for g in groups] == [
        ("feature_map", ["se", "eca"]),
        ("token_mixer", ["mhsa"]),
    ]
    assert all(g["host"] and g["threads"] == 1 and g["cpu"] for g in groups)
    assert [r["name"] for r in distributed["results"]] == [r["name"] for r in local["results"]]

    def costs(doc: dict[str, Any]) -> list[Any]:
        return [
            (r["params"], [(s["size"], s["status"], s.get("flops_fwd")) for s in r["sizes"]])
            for r in doc["results"]
        ]

    assert costs(distributed) == costs(local)
    assert all(s["status"] == "ok" for r in distributed["results"] for s in r["sizes"])


class _LostNode:
    """A backend whose first job's node is lost for good (after its retries)."""

    name = "lost"

    def run(self, fn: Any, calls: Any, *, cpus: int, on_result: Any) -> None:
        raise JobFailedError("1 job(s) failed", {0: "NodeDiedError: node lost"})


def test_a_bench_family_that_fails_on_the_backend_is_named() -> None:
    with pytest.raises(
        JobFailedError, match=r"1 family job\(s\) failed: feature_map \(se, eca\): NodeDiedError"
    ):
        run_benchmarks(["se", "mhsa", "eca"], BenchConfig(), progress=False, backend=_LostNode())


def test_bad_ray_settings_are_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"retries \(--ray-retries\) must be >= 0"):
        RayBackend(retries=-1)
    with pytest.raises(ValueError, match=r"cpus \(--ray-cpus\) must be positive"):
        RayBackend(cpus=0)
    with pytest.raises(ValueError, match="address"):
        RayBackend(address=" ")
    with pytest.raises(ValueError, match=r"each job needs 64 CPUs .* largest node of the Ray cluster has 2"):
        _execute(_jobs(range(1)), train_one, RayBackend(cpus=64))
    assert _eval(_TASK, "--preset", "tiny", "--ray-retries", "1", "--runs", "unused") == 2
    assert "--ray-retries: Ray options, given without --backend ray" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="nothing to distribute: the linear suite"):
        main(["bench", "--suite", "linear", "--backend", "ray", "--out", "unused"])


def test_missing_ray_names_the_distributed_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a)
    )
    extra = r"pip install 'attnzoo\[distributed\]'"
    with pytest.raises(ModuleNotFoundError, match=extra):
        RayBackend()
    runs = tmp_path / "runs"
    assert _eval(_TASK, "--preset", "tiny", "--backend", "ray", "--runs", str(runs)) == 2
    assert "--backend ray needs the package 'ray'" in capsys.readouterr().out
    assert not any(runs.glob("*/*"))  # no run folder is left behind
    with pytest.raises(SystemExit, match=extra):
        main(["bench", "--only", "se", "--backend", "ray", "--out", str(tmp_path / "bench")])


def test_the_local_backend_runs_without_importing_ray(tmp_path: Path) -> None:
    code = (
        "import sys; from attnzoo.cli import main; "
        f"code = main(['eval', {_TASK!r}, '--preset', 'tiny', '--mechanisms', 'mhsa', '--steps', '1', "
        f"'--no-progress', '--out', {str(tmp_path)!r}]); "
        "assert code == 0, code; assert 'ray' not in sys.modules, 'ray was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
