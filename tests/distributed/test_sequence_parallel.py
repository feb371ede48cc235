"""attnzoo.distributed on 2 and 3 gloo processes in float64: ring attention (plain and causal) and
sequence-parallel gated linear attention equal the single-process kernels in outputs and gradients;
shard/gather round-trip with the documented gradient convention; bad inputs raise on every rank.
The scenarios themselves live in tests/distributed/_workers.py (spawned processes import them)."""

from __future__ import annotations

import socket

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


@pytest.mark.parametrize("world", [2, 3])
def test_scenarios(world: int) -> None:
    scenarios = sorted(_workers.SCENARIOS)
    mp.spawn(_workers.run, args=(world, _free_port(), scenarios), nprocs=world, join=True)


def test_uninitialised_process_group_is_a_clear_error() -> None:
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    for call in (
        lambda: ring_attention(x, x, x),
        lambda: sequence_parallel_linear_attention(x, x, x),
        lambda: gather_sequence(x, dim=2),
    ):
        with pytest.raises(RuntimeError, match="not initialised"):
            call()
