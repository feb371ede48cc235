"""A rank that dies or hangs in the middle of ring attention or Ulysses attention (forward or
backward) or of core attention disaggregation (forward, backward, or DisaggregatedAttention while
planning) makes every other rank raise attnzoo's RankFailure, naming the operation and the process
group's timeout, within a bound (no rank waits forever). Three gloo ranks, group timeout 2 s (set
with torch.distributed.set_timeout after joining); rank 1 is the victim. One test per path and
mode, each bounded by BOUND_S (its processes are killed after it)."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
from tests.distributed import _failure_workers
from tests.distributed._harness import START, free_port

pytestmark = pytest.mark.slow

WORLD = 3
BOUND_S = 30.0  # far above the 2 s timeout (a survivor may wait for a peer that waits for the victim)
OPERATION = {
    "ring": "ring shift",
    "ring_backward": "ring shift",
    "ulysses": "ulysses_attention's all-to-all back to shards",
    "ulysses_backward": "the backward of ulysses_attention's all-to-all back to shards",
    "core_forward": "core_attention's output return",
    "core_backward": "core_attention's",
    "module": "the input check",
}


def _survivors_report(path: str, mode: str, out_dir: Path) -> tuple[list[dict], float]:
    context = multiprocessing.get_context(START)
    port = free_port()
    processes = [
        context.Process(target=_failure_workers.run, args=(r, WORLD, port, path, mode, str(out_dir)))
        for r in range(WORLD)
    ]
    start = time.monotonic()
    for process in processes:
        process.start()
    survivors = [r for r in range(WORLD) if r != _failure_workers.VICTIM]
    files = [out_dir / f"rank{r}.json" for r in survivors]
    try:
        while not all(f.exists() for f in files) and time.monotonic() - start < BOUND_S:
            time.sleep(0.05)
        waited = time.monotonic() - start
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
    missing = [r for r, f in zip(survivors, files) if not f.exists()]
    assert not missing, f"ranks {missing} did not raise within {BOUND_S:.0f} s after rank 1 {mode}d in {path}"
    return [json.loads(f.read_text()) for f in files], waited


@pytest.mark.parametrize("mode", ["die", "hang"])
@pytest.mark.parametrize("path", sorted(OPERATION))
def test_every_other_rank_raises_rank_failure(path: str, mode: str, tmp_path: Path) -> None:
    reports, waited = _survivors_report(path, mode, tmp_path)
    assert waited < BOUND_S
    for report in reports:
        assert report["error"] == "RankFailure", report
        assert report["timeout_s"] == _failure_workers.GROUP_TIMEOUT_S, report
        assert "timeout of 2 s" in report["message"] and "attnzoo.distributed" in report["message"], report
        assert f"of {WORLD}" in report["message"], report
    # the rank that waited on the victim itself names the operation it was in
    assert any(OPERATION[path] in r["message"] for r in reports), [r["message"][:160] for r in reports]
