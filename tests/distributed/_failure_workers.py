"""Worker of tests/distributed/test_failures.py: three gloo ranks run one distributed path (ring,
Ulysses or core attention disaggregation); the victim rank dies (``os._exit``) or hangs in the
middle of it, and every other rank records what it raised, and when, in ``out_dir/rank<r>.json``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tests.distributed._harness import join_group

from attnzoo.distributed import (
    DisaggregatedAttention,
    RankFailure,
    core_attention,
    plan_core_attention,
    ring_attention,
    ulysses_attention,
)
from attnzoo.distributed import _comm as comm_module
from attnzoo.distributed import executor as core_module
from attnzoo.distributed import module as module_module
from attnzoo.distributed import ring as ring_module
from attnzoo.distributed import ulysses as ulysses_module

VICTIM = 1
GROUP_TIMEOUT_S = 2.0


def _fail(mode: str) -> None:
    if mode == "die":
        os._exit(3)
    time.sleep(600)  # hang: the harness kills this process


def _sabotage(module: object, name: str, mode: str, after: int) -> None:
    """Make the victim's ``after``-th call of ``module.name`` (0 = the first) die or hang."""
    original = getattr(module, name)
    calls = [0]

    def wrapped(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] > after:
            _fail(mode)
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


def _ring(rank: int, world: int) -> None:
    q = torch.randn(1, 2, 4, 8, dtype=torch.float64, requires_grad=True)
    ring_attention(q, q, q, causal=False).sum().backward()


def _ulysses(rank: int, world: int) -> None:
    q = torch.randn(1, world, 4, 8, dtype=torch.float64, requires_grad=True)
    ulysses_attention(q, q, q, causal=True).sum().backward()


def _core(rank: int, world: int) -> None:
    plan = plan_core_attention(
        [40, 3, 5, 12, 2, 10] if world == 3 else [48, 24], world, tolerance=0.0, min_chunk=2
    )
    q = torch.randn(2, plan.tokens_per_rank, 8, dtype=torch.float64, requires_grad=True)
    out, _ = core_attention(q, q, q, plan)
    out.sum().backward()


def _module(rank: int, world: int) -> None:
    attn = DisaggregatedAttention(tolerance=0.0, min_chunk=2)
    q = torch.randn(2, 72 // world, 8, dtype=torch.float64, requires_grad=True)
    out, _ = attn(q, q, q, [40, 3, 5, 12, 2, 10])
    out.sum().backward()


# path -> (the call, the victim's function to sabotage and how many calls to let through)
PATHS: dict[str, tuple[Callable[[int, int], None], object, str, int]] = {
    "ring": (_ring, ring_module, "attention_with_lse", 1),  # after the first ring step
    "ring_backward": (_ring, ring_module, "attention_block_grad", 1),  # in the backward's second step
    "ulysses": (_ulysses, ulysses_module, "attention", 0),  # between the two all-to-alls
    "ulysses_backward": (_ulysses, comm_module, "_all_to_all", 2),  # the backward's first all-to-all
    "core_forward": (_core, core_module, "attention_with_lse", 0),  # after the q/k/v dispatch
    "core_backward": (_core, core_module, "attention_block_grad", 0),  # in the backward pass
    "module": (_module, module_module, "plan_core_attention", 0),  # while planning, before any data
}


def run(rank: int, world: int, port: int, path: str, mode: str, out_dir: str) -> None:
    join_group(rank, world, port, 60.0)
    dist.set_timeout(timedelta(seconds=GROUP_TIMEOUT_S))
    call, module, name, after = PATHS[path]
    if rank == VICTIM:
        _sabotage(module, name, mode, after)
    start = time.monotonic()
    result: dict[str, object] = {"rank": rank, "error": None, "message": ""}
    try:
        call(rank, world)
    except RankFailure as err:
        result.update(error="RankFailure", message=str(err), timeout_s=err.timeout_s)
    except Exception as err:  # recorded, so that the test names what was raised instead
        result.update(error=type(err).__name__, message=str(err))
    result["elapsed_s"] = time.monotonic() - start
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    os._exit(0)  # the group is broken: skip its teardown
