"""The runs of one ``attnzoo eval``, their journal, and how they are executed.

A *job* is one training run: (mechanism, seed, learning rate). Jobs run in this process or on a
:class:`Backend`: the :class:`LocalPool` of worker processes (the default) or a Ray cluster
(:class:`attnzoo.distributed.ray_backend.RayBackend`, ``--backend ray``). Every backend runs the
same job function and hands each result back to this process, which appends it to the eval's
journal (``runs.jsonl``, one JSON object per line, flushed as it lands), so an interrupted eval
resumes from what it finished, whichever backend ran it: the journal's first line records the
configuration that decides the numbers, and a resume with a different configuration is refused
instead of mixing two experiments.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from tqdm import tqdm

from attnzoo.tasks.catalog import Budget, Preset, get_task

__all__ = [
    "BACKENDS",
    "JOURNAL",
    "Backend",
    "Job",
    "JobFailedError",
    "Journal",
    "JournalMismatchError",
    "LocalPool",
    "add_backend_args",
    "backend_from_args",
    "execute",
]

JOURNAL = "runs.jsonl"
"""File name of the journal inside a run folder."""


class JournalMismatchError(ValueError):
    """``--resume`` named a journal written by a different configuration."""


class JobFailedError(RuntimeError):
    """Jobs failed on a backend after its retries; the other jobs finished (and were journaled).

    Attributes:
        errors: ``{index into the backend's calls: what went wrong}``.
    """

    def __init__(self, message: str, errors: Mapping[int, str]) -> None:
        super().__init__(message)
        self.errors = dict(errors)


@dataclass(frozen=True)
class Job:
    """One training run of an eval."""

    mechanism: str
    seed: int
    budget: Budget
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity in the journal: mechanism, seed, learning rate and constructor overrides."""
        return json.dumps([self.mechanism, self.seed, self.budget.lr, dict(self.overrides)], sort_keys=True)


def _run_key(run: Mapping[str, Any]) -> str:
    return json.dumps(
        [run["mechanism"], run["seed"], run["budget"]["lr"], run.get("overrides", {})], sort_keys=True
    )


class Journal:
    """Finished runs of one eval, kept in a JSON-lines file.

    Args:
        path: the journal file (created with its header when missing).
        config: what decides the numbers (task, preset, backbone, budget, threads); must equal the
            header of an existing journal, else :class:`JournalMismatchError` lists the differences.
    """

    def __init__(self, path: Path | str, config: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.config = json.loads(json.dumps(config))
        self.runs: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            header = lines[0].get("config") if lines else None
            if header != self.config:
                keys = sorted(set(header or {}) | set(self.config))
                diff = [k for k in keys if (header or {}).get(k) != self.config.get(k)]
                raise JournalMismatchError(
                    f"{self.path} was written by another configuration (differs in {diff}): resume "
                    "with the command that started it, or start a new run folder"
                )
            for run in lines[1:]:
                self.runs[_run_key(run)] = run
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"config": self.config}) + "\n")

    def record(self, run: Mapping[str, Any]) -> None:
        """Append one finished run (flushed and synced, so a killed eval keeps it)."""
        self.runs[_run_key(run)] = dict(run)
        with self.path.open("a") as f:
            f.write(json.dumps(run) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _pool_context() -> mp.context.BaseContext:
    return mp.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")


R = TypeVar("R")


class Backend(Protocol):
    """Where independent jobs run. ``run`` calls ``fn(*args)`` once for every ``args`` in ``calls``,
    each in a worker process with ``cpus`` CPUs for it (``fn`` sets its own thread count), and calls
    ``on_result(index, value)`` in this process as each job lands (in any order). ``fn`` must be a
    module-level function and ``args`` picklable. A job that fails raises from ``run``."""

    name: str

    def run(
        self,
        fn: Callable[..., R],
        calls: Sequence[tuple[Any, ...]],
        *,
        cpus: int,
        on_result: Callable[[int, R], None],
    ) -> None: ...


@dataclass(frozen=True)
class LocalPool:
    """The default backend: ``workers`` processes on this machine (fork server on Linux, spawn
    elsewhere). A job's threads are set by its function, so ``cpus`` is not used; the first job
    that raises stops the run with its exception."""

    workers: int
    name: str = "local"

    def run(
        self,
        fn: Callable[..., R],
        calls: Sequence[tuple[Any, ...]],
        *,
        cpus: int,
        on_result: Callable[[int, R], None],
    ) -> None:
        """See :class:`Backend`."""
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=_pool_context()) as pool:
            futures = {pool.submit(fn, *args): i for i, args in enumerate(calls)}
            for future in as_completed(futures):
                on_result(futures[future], future.result())


BACKENDS = ("local", "ray")
"""Values of ``--backend``."""


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend`` and the Ray options (``--ray-address``, ``--ray-retries``, ``--ray-cpus``)."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="where jobs run: local (this machine, default) or ray (a Ray cluster; needs the "
        "distributed extra)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster to join ('auto': the one `ray start` runs here; ray://host:port: Ray "
        "Client); default: start a local Ray instance for this command",
    )
    parser.add_argument(
        "--ray-retries",
        type=int,
        metavar="N",
        help="times Ray re-runs a job whose worker raised or died (default: 2)",
    )
    parser.add_argument(
        "--ray-cpus",
        type=int,
        metavar="N",
        help="CPUs Ray reserves for each job (default: the job's threads); a node's CPU count runs "
        "one job per node",
    )


def backend_from_args(args: argparse.Namespace) -> Backend | None:
    """The backend that :func:`add_backend_args`'s options name: ``None`` for ``--backend local``
    (the command's own local execution), a :class:`~attnzoo.distributed.ray_backend.RayBackend`
    for ``ray`` (``ModuleNotFoundError`` naming the ``distributed`` extra when Ray is missing).
    Ray options given with ``--backend local`` are refused, not ignored."""
    options = {"address": args.ray_address, "retries": args.ray_retries, "cpus": args.ray_cpus}
    given = {k: v for k, v in options.items() if v is not None}
    if args.backend == "local":
        if given:
            flags = ", ".join(f"--ray-{k}" for k in given)
            raise ValueError(f"{flags}: Ray options, given without --backend ray")
        return None
    from attnzoo.distributed.ray_backend import RayBackend

    return RayBackend(**given)


Train = Callable[..., dict[str, Any]]
"""``train(data, preset, mechanism, *, seed, budget, overrides, progress) -> run`` (``train_one``)."""


def _train(train: Train, data: Any, preset: Preset, job: Job, progress: bool) -> dict[str, Any]:
    return train(
        data, preset, job.mechanism, seed=job.seed, budget=job.budget, overrides=job.overrides or None,
        progress=progress,
    )


def _train_in_worker(
    train: Train, task: str, preset_name: str, preset: Preset, job: Job, threads: int
) -> dict[str, Any]:
    """One run in a worker process: regenerate the seed's data (deterministic) and train."""
    torch.set_num_threads(threads)
    return _train(train, get_task(task).generate(preset_name, seed=job.seed), preset, job, False)


def execute(
    task: str,
    preset_name: str,
    preset: Preset,
    jobs: Sequence[Job],
    train: Train,
    *,
    workers: int,
    threads: int,
    journal: Journal | None = None,
    progress: bool = True,
    backend: Backend | None = None,
) -> list[dict[str, Any]]:
    """Run ``jobs`` with ``train`` (skipping those already in ``journal``) and return their results
    in job order. Without ``backend``, ``workers == 1`` trains in this process and more workers
    each train in their own process (:class:`LocalPool`) with ``threads`` threads; a ``backend``
    runs every job in its workers with ``threads`` threads and ``threads`` CPUs. Off this process,
    ``train`` must be a module-level function. Results are journaled here as they land; jobs that
    fail on the backend raise :class:`JobFailedError` naming them, after the rest finished."""
    done = journal.runs if journal is not None else {}
    todo = [job for job in jobs if job.key not in done]
    results: dict[str, dict[str, Any]] = {job.key: done[job.key] for job in jobs if job.key in done}

    def finish(job: Job, run: dict[str, Any]) -> None:
        results[job.key] = run
        if journal is not None:
            journal.record(run)

    if backend is None and workers == 1:
        data_by_seed: dict[int, Any] = {}
        for job in todo:
            if job.seed not in data_by_seed:
                data_by_seed = {job.seed: get_task(task).generate(preset_name, seed=job.seed)}
            finish(job, _train(train, data_by_seed[job.seed], preset, job, progress))
    elif todo:
        calls = [(train, task, preset_name, preset, job, threads) for job in todo]
        with tqdm(total=len(todo), desc=f"{task}: runs", disable=not progress) as bar:

            def landed(index: int, run: dict[str, Any]) -> None:
                finish(todo[index], run)
                bar.update(1)

            try:
                (backend or LocalPool(workers)).run(_train_in_worker, calls, cpus=threads, on_result=landed)
            except JobFailedError as exc:
                failed = "; ".join(
                    f"{todo[i].mechanism} (seed {todo[i].seed}, lr {todo[i].budget.lr:g}): {error}"
                    for i, error in sorted(exc.errors.items())
                )
                raise JobFailedError(f"{len(exc.errors)} run(s) failed: {failed}", exc.errors) from exc
    return [results[job.key] for job in jobs]
