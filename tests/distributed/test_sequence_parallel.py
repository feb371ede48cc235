"""attnzoo.distributed on 2 and 3 gloo processes in float64: ring attention (plain and causal) and
sequence-parallel gated linear attention equal the single-process kernels in outputs and gradients;
shard/gather round-trip with the documented gradient convention; bad inputs raise on every rank.
The scenarios themselves live in tests/distributed/_workers.py (spawned processes import them)."""

from __future__ import annotations

import multiprocessing
import socket
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from tests.distributed import _workers

from attnzoo.distributed import gather_sequence, ring_attention, sequence_parallel_linear_attention

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TIMEOUT_S = 180.0
# Each scenario gets fresh processes; forked from a server that imported torch and the scenarios
# once, they start in well under a second instead of re-importing torch each time.
START = "forkserver" if sys.platform.startswith("linux") else "spawn"
if START == "forkserver":
    multiprocessing.set_forkserver_preload(["tests.distributed._workers"])


def _spawn(world: int, scenario: str, timeout: float = TIMEOUT_S) -> None:
    """Run one scenario on ``world`` fresh gloo processes; fail (killing them) after ``timeout``."""
    context = mp.start_processes(
        _workers.run, args=(world, _free_port(), [scenario]), nprocs=world, join=False, start_method=START
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"scenario {scenario!r} on {world} processes did not finish within {timeout:.0f} s")


@pytest.mark.parametrize("scenario", sorted(_workers.SCENARIOS))
@pytest.mark.parametrize("world", [2, 3])
def test_scenario(world: int, scenario: str) -> None:
    _spawn(world, scenario)


def test_a_hanging_scenario_fails_within_its_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not finish within 5 s"):
        _spawn(2, "hang", timeout=5.0)
    assert time.monotonic() - start < 60.0


def test_uninitialised_process_group_is_a_clear_error() -> None:
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    for call in (
        lambda: ring_attention(x, x, x),
        lambda: sequence_parallel_linear_attention(x, x, x),
        lambda: gather_sequence(x, dim=2),
    ):
        with pytest.raises(RuntimeError, match="not initialised"):
            call()
