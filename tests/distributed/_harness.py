"""Process harness of the distributed tests: every scenario runs on fresh gloo processes, forked
from a server that imported torch and the scenario modules once (they start in well under a second
instead of re-importing torch each time), and is killed after a deadline."""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.distributed import _workers, _workers_core, _workers_module, _workers_ulysses

SCENARIOS: dict[str, Callable[[int, int], None]] = {
    **_workers.SCENARIOS,
    **_workers_ulysses.SCENARIOS,
    **_workers_core.SCENARIOS,
    **_workers_module.SCENARIOS,
}
WORLDS: dict[str, tuple[int, ...]] = {name: (2, 3) for name in SCENARIOS} | _workers_core.WORLDS
TIMEOUT_S = 180.0
START = "forkserver" if sys.platform.startswith("linux") else "spawn"
if START == "forkserver":
    multiprocessing.set_forkserver_preload(
        ["tests.distributed._harness", "tests.distributed._failure_workers"]
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int, timeout_s: float) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))


def run(rank: int, world: int, port: int, scenarios: list[str]) -> None:
    """``torch.multiprocessing`` entry point: join a gloo group and run ``scenarios`` in order."""
    join_group(rank, world, port, 120.0)
    try:
        for name in scenarios:
            try:
                {**SCENARIOS, **_workers.HARNESS_CHECKS}[name](rank, world)
            except (Exception, pytest.fail.Exception) as err:
                raise AssertionError(f"scenario {name!r} failed on rank {rank} of {world}") from err
            dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(world: int, scenario: str, timeout: float = TIMEOUT_S) -> None:
    """Run one scenario on ``world`` fresh gloo processes; fail (killing them) after ``timeout``."""
    context = mp.start_processes(
        run, args=(world, free_port(), [scenario]), nprocs=world, join=False, start_method=START
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"scenario {scenario!r} on {world} processes did not finish within {timeout:.0f} s")
