"""attnzoo.distributed on 2 and 3 gloo processes (core attention also on 4) in float64: ring and
Ulysses attention (plain and causal) and sequence-parallel gated linear attention equal the
single-process kernels in outputs and gradients; core attention disaggregation equals per-document
causal attention for every planner; shard/gather round-trip with the documented gradient
convention; bad inputs raise on every rank. The scenarios live in tests/distributed/_workers*.py
(spawned processes import them), the process harness in tests/distributed/_harness.py."""

from __future__ import annotations

import time

import pytest
import torch
from tests.distributed import _harness

from attnzoo.distributed import (
    core_attention,
    gather_sequence,
    plan_local,
    ring_attention,
    sequence_parallel_linear_attention,
    ulysses_attention,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("world", "scenario"), [(w, s) for s in sorted(_harness.SCENARIOS) for w in _harness.WORLDS[s]]
)
def test_scenario(world: int, scenario: str) -> None:
    _harness.spawn(world, scenario)


def test_a_hanging_scenario_fails_within_its_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not finish within 5 s"):
        _harness.spawn(2, "hang", timeout=5.0)
    assert time.monotonic() - start < 60.0


def test_uninitialised_process_group_is_a_clear_error() -> None:
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    plan = plan_local([3], 1)
    for call in (
        lambda: ring_attention(x, x, x),
        lambda: ulysses_attention(x, x, x),
        lambda: sequence_parallel_linear_attention(x, x, x),
        lambda: gather_sequence(x, dim=2),
        lambda: core_attention(x[0], x[0], x[0], plan),
    ):
        with pytest.raises(RuntimeError, match="not initialised"):
            call()
