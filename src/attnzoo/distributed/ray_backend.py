"""Run attnzoo's sweeps on a Ray cluster (``--backend ray`` of ``attnzoo eval`` and ``attnzoo bench``).

:class:`RayBackend` is a :class:`attnzoo.tasks.jobs.Backend`: it runs the very job functions the
local worker pool runs, as Ray core remote tasks, and hands every result back to the driver, which
journals it exactly as a local run does. So a seed gives the same numbers on either backend (at the
same threads per job), and an interrupted Ray sweep resumes from its run folder (``--resume``), on
Ray or locally.

* Each job reserves ``cpus`` CPUs (default: its threads), so Ray runs as many at once as the
  cluster has CPUs for; a job that needs more CPUs than any node has is refused before it waits.
* A job whose worker raised or died (killed, out of memory, node lost) is re-run up to ``retries``
  times; one that still fails does not stop the others: they finish and are journaled, then
  :class:`~attnzoo.tasks.jobs.JobFailedError` names the failures (``--resume`` re-runs only them).
* ``address=None`` starts a local Ray instance for the run and stops it afterwards; ``"auto"``
  joins the cluster ``ray start`` runs on this machine, ``"ray://host:10001"`` one through Ray
  Client. A Ray connection the caller already opened (``ray.init``) is used as it is and left open.
  Every node needs attnzoo installed, and the mechanisms it registers on import are the ones a
  worker knows.

Ray is imported only when a :class:`RayBackend` is made; without it, that raises
``ModuleNotFoundError`` naming the ``distributed`` extra.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from attnzoo.checks import check_int
from attnzoo.tasks.jobs import JobFailedError

__all__ = ["RETRIES", "RayBackend", "require_ray"]

RETRIES = 2
"""Default number of times a failed job is re-run."""

R = TypeVar("R")


def require_ray() -> None:
    """``ModuleNotFoundError`` (naming the ``distributed`` extra) unless Ray can be imported."""
    if importlib.util.find_spec("ray") is None:
        raise ModuleNotFoundError(
            "--backend ray needs the package 'ray': install the distributed extra "
            "(pip install 'attnzoo[distributed]')",
            name="ray",
        )


def _brief(exc: BaseException) -> str:
    """One line for a failed job: the job's own exception when it raised, else Ray's first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class RayBackend:
    """Runs jobs as Ray core remote tasks (see the module docstring).

    Args:
        address: Ray cluster address (``--ray-address``); ``None`` starts a local instance.
        retries: times a job whose worker raised or died is re-run (``--ray-retries``).
        cpus: CPUs reserved per job (``--ray-cpus``), replacing the ``cpus`` the caller asks for.
    """

    name = "ray"

    def __init__(
        self, address: str | None = None, *, retries: int = RETRIES, cpus: int | None = None
    ) -> None:
        require_ray()
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address (--ray-address) must be a non-empty string, got {address!r}")
        self.address = address
        self.retries = check_int(retries, "retries (--ray-retries)", minimum=0)
        self.cpus = None if cpus is None else check_int(cpus, "cpus (--ray-cpus)")

    def run(
        self,
        fn: Callable[..., R],
        calls: Sequence[tuple[Any, ...]],
        *,
        cpus: int,
        on_result: Callable[[int, R], None],
    ) -> None:
        """Run ``fn(*args)`` for every ``args`` of ``calls`` on the cluster, each with ``cpus`` CPUs
        (or the backend's own), calling ``on_result(index, value)`` here as each lands. Raises
        :class:`~attnzoo.tasks.jobs.JobFailedError` after the others finished if jobs failed after
        their retries; if ``on_result`` raises (or the driver is interrupted), the jobs not yet
        landed are cancelled (their workers killed)."""
        import ray

        need = self.cpus if self.cpus is not None else check_int(cpus, "cpus")
        started = not ray.is_initialized()
        if started:
            local = {"include_dashboard": False} if self.address is None else {}
            ray.init(address=self.address, logging_level=logging.WARNING, **local)
        pending: dict[Any, int] = {}
        errors: dict[int, str] = {}
        try:
            largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=0.0)
            if need > largest:
                raise ValueError(
                    f"each job needs {need} CPUs (its threads, from eval --jobs or bench --threads, or "
                    f"--ray-cpus) but the largest node of the Ray cluster has {largest:g}: the jobs would "
                    "never start"
                )
            task = ray.remote(fn).options(num_cpus=need, max_retries=self.retries, retry_exceptions=True)
            pending = {task.remote(*args): i for i, args in enumerate(calls)}
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    errors[index] = _brief(exc)
                    continue
                on_result(index, value)
        finally:
            for ref in pending:  # killed, not interrupted: an interrupt may land mid-import and leave
                ray.cancel(ref, force=True)  # a half-initialised worker that Ray would reuse
            if started:
                ray.shutdown()
        if errors:
            raise JobFailedError(
                f"{len(errors)} job(s) failed after {self.retries} retries: "
                + "; ".join(f"#{i}: {e}" for i, e in sorted(errors.items())),
                errors,
            )
