"""The runs of one ``attnzoo eval``, their journal, and how they are executed.

A *job* is one training run: (mechanism, seed, learning rate). Jobs run in this process or in a
pool of worker processes; each finished run is appended to the eval's journal (``runs.jsonl``, one
JSON object per line, flushed as it lands), so an interrupted eval resumes from what it finished:
the journal's first line records the configuration that decides the numbers, and a resume with a
different configuration is refused instead of mixing two experiments.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from attnzoo.tasks.catalog import Budget, Preset, get_task

__all__ = ["JOURNAL", "Job", "Journal", "JournalMismatchError", "execute"]

JOURNAL = "runs.jsonl"
"""File name of the journal inside a run folder."""


class JournalMismatchError(ValueError):
    """``--resume`` named a journal written by a different configuration."""


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
) -> list[dict[str, Any]]:
    """Run ``jobs`` with ``train`` (skipping those already in ``journal``) and return their results
    in job order; ``workers == 1`` trains in this process, more workers each train in their own
    process with ``threads`` threads (``train`` must then be a module-level function)."""
    done = journal.runs if journal is not None else {}
    todo = [job for job in jobs if job.key not in done]
    results: dict[str, dict[str, Any]] = {job.key: done[job.key] for job in jobs if job.key in done}

    def finish(job: Job, run: dict[str, Any]) -> None:
        results[job.key] = run
        if journal is not None:
            journal.record(run)

    if workers == 1:
        data_by_seed: dict[int, Any] = {}
        for job in todo:
            if job.seed not in data_by_seed:
                data_by_seed = {job.seed: get_task(task).generate(preset_name, seed=job.seed)}
            finish(job, _train(train, data_by_seed[job.seed], preset, job, progress))
    elif todo:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            futures = {
                pool.submit(_train_in_worker, train, task, preset_name, preset, job, threads): job
                for job in todo
            }
            bar = tqdm(as_completed(futures), total=len(futures), desc=f"{task}: runs", disable=not progress)
            for future in bar:
                finish(futures[future], future.result())
    return [results[job.key] for job in jobs]
