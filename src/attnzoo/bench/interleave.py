"""Time the mechanisms of one family against each other: one fresh worker process builds them all
and times them interleaved (:func:`attnzoo.bench.measure.time_interleaved`) with a square fp32 GEMM,
so that load changes reach every contender alike and their FLOP rates can be read against the
GEMM's (the leaderboard's latency; memory and FLOPs come from :mod:`attnzoo.bench.runner`, one
process per mechanism)."""

from __future__ import annotations

import os
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import torch

import attnzoo
from attnzoo.bench.measure import bench_inputs, time_interleaved
from attnzoo.bench.runner import BenchConfig, worker_context
from attnzoo.registry import Card, mechanism_class, register

__all__ = ["Contender", "run_interleaved"]

Contender = tuple[str, str, dict[str, Any], list[list[int] | None]]
"""``(mechanism, label, constructor kwargs, size of each round or None)``."""


def _interleaved_worker(
    contenders: list[Contender],
    registered: dict[str, tuple[type, Card]],
    config: BenchConfig,
    gemm_n: int,
    conn: Connection,
) -> None:
    """Time every contender ``(name, label, kwargs, sizes)`` of one family in this process: round
    ``i`` times each at its ``sizes[i]`` (``None``: not in that round) and the GEMM, interleaved.
    ``registered`` re-registers mechanisms that user code registered after the fork server started."""
    for name, (cls, card) in registered.items():
        if name not in attnzoo.list_mechanisms():
            register(card)(cls)
    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    gemm_a, gemm_b = torch.randn(gemm_n, gemm_n), torch.randn(gemm_n, gemm_n)
    try:
        modules: dict[str, torch.nn.Module] = {}
        broken: dict[str, str] = {}
        for name, label, kwargs, _ in contenders:
            try:
                modules[label] = attnzoo.create(name, **kwargs).eval()
            except Exception as exc:  # named in every round, the others still timed
                broken[label] = "".join(traceback.format_exception_only(exc)).strip()
        rounds = max((len(c[3]) for c in contenders), default=0)
        for i in range(rounds):
            fns: dict[str, Any] = {}
            errors: dict[str, str] = {}
            for _, label, _, sizes in contenders:
                if i >= len(sizes) or sizes[i] is None:
                    continue
                if label in broken:
                    errors[label] = broken[label]
                    continue
                try:
                    ex = bench_inputs(modules[label], tuple(sizes[i]), config.batch)
                    fn = (lambda m, e: lambda: m(*e.args, **e.kwargs))(modules[label], ex)
                    with torch.no_grad():
                        fn()
                except Exception as exc:  # reported beside the figure, the others still timed
                    errors[label] = "".join(traceback.format_exception_only(exc)).strip()
                    continue
                fns[label] = fn
            load_before = list(os.getloadavg())
            with torch.no_grad():
                timing = time_interleaved(
                    {**fns, "__gemm__": lambda: gemm_a @ gemm_b}, warmup=config.warmup, repeats=config.repeats
                )
            gemm = timing.pop("__gemm__")
            row = {
                "round": i,
                "timings": timing,
                "errors": errors,
                "gemm": {
                    "n": gemm_n,
                    "min_ms": gemm["min"],
                    "gflops": 2 * gemm_n**3 / (gemm["min"] * 1e-3) / 1e9,
                },
                "load_before": load_before,
                "load_after": list(os.getloadavg()),
            }
            conn.send({"kind": "row", "row": row})
    except Exception as exc:  # reported as the family's status, never a crash of the run
        conn.send({"kind": "error", "error": "".join(traceback.format_exception_only(exc)).strip()})
    finally:
        conn.send({"kind": "done"})
        conn.close()


def run_interleaved(
    contenders: list[Contender],
    config: BenchConfig,
    *,
    gemm_n: int = 2048,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Latency of one family's contenders ``(name, label, constructor kwargs, sizes per round)``
    timed in one fresh worker process, interleaved with a ``gemm_n``-square fp32 GEMM (each of
    ``config.repeats`` repetitions calls every contender once; min and median after
    ``config.warmup`` untimed calls), the load average before and after each round.

    Returns ``{"status": "ok" | "error" | "timeout", "error"?, "rounds": [...]}``; a contender that
    raises is named in its round's ``errors`` and the others are still timed."""
    ctx = worker_context()
    parent, child = ctx.Pipe(duplex=False)
    registered = {name: (mechanism_class(name), attnzoo.card(name)) for name, *_ in contenders}
    proc = ctx.Process(
        target=_interleaved_worker, args=(contenders, registered, config, gemm_n, child), daemon=True
    )
    proc.start()
    child.close()
    out: dict[str, Any] = {"status": "ok", "rounds": []}
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            out.update(status="timeout", error=f"family worker exceeded {timeout_s:.0f} s")
            break
        if not parent.poll(min(remaining, 1.0)):
            if not proc.is_alive() and not parent.poll():
                out.update(status="error", error=f"family worker died with exit code {proc.exitcode}")
                break
            continue
        try:
            msg = parent.recv()
        except EOFError:
            out.update(status="error", error="family worker closed its pipe early")
            break
        if msg["kind"] == "row":
            out["rounds"].append(msg["row"])
        elif msg["kind"] == "error":
            out.update(status="error", error=msg["error"])
        else:
            break
    if proc.is_alive():
        proc.kill()
    proc.join(timeout=10)
    parent.close()
    return out
