"""The real run of ``python -m attnzoo.distributed.report``: :class:`DisaggregatedAttention` on
``W`` gloo processes of this machine, forward and backward in float64, against single-process
variable-length causal attention.

The parent process computes the reference (per-document :func:`attnzoo.kernels.attention`, its
log-sum-exp and the gradients of ``sum(out * w)``) and times it beside a 2048² fp32 GEMM; then
``W`` fresh processes join a gloo group, each builds the same inputs from the seed, and in
interleaved rounds (every round calls every planner once, then the GEMM) runs the module with
each planner, counting the bytes it sends to other ranks, and compares its rows of the output,
log-sum-exp and gradients with the reference's. A run that does not finish within its deadline
is killed and raises.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnzoo.bench.measure import time_interleaved
from attnzoo.distributed._comm import count_sent_bytes
from attnzoo.distributed._plan import AttentionShape
from attnzoo.distributed.module import PLANNERS, DisaggregatedAttention
from attnzoo.kernels import attention

__all__ = ["RealRun", "run_on_gloo"]


@dataclass(frozen=True)
class RealRun:
    """One gloo run: ``world`` ranks, ``doc_lengths`` packed (``T`` tokens), ``heads`` x
    ``head_dim`` float64 q/k/v (``d_v = d``), planners' ``tolerance``/``min_chunk``, ``repeats``
    timed rounds after one warm-up round, a ``gemm_n``² fp32 GEMM, ``deadline_s`` for the run."""

    world: int
    doc_lengths: tuple[int, ...]
    heads: int = 2
    head_dim: int = 32
    tolerance: float = 0.1
    min_chunk: int = 128
    repeats: int = 5
    gemm_n: int = 2048
    seed: int = 0
    deadline_s: float = 600.0


def _inputs(run: RealRun) -> list[torch.Tensor]:
    """``q, k, v, w``: ``(h, T, d)`` float64, identical in every process for the seed."""
    gen = torch.Generator().manual_seed(run.seed)
    total = sum(run.doc_lengths)
    return [torch.randn(run.heads, total, run.head_dim, generator=gen, dtype=torch.float64) for _ in range(4)]


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...]
) -> list[torch.Tensor]:
    """Single-process varlen causal attention: ``out (h, T, d)`` and ``lse (h, T)``."""
    outs, lses, start = [], [], 0
    for n in lengths:
        qd, kd, vd = (t[:, start : start + n] for t in (q, k, v))
        outs.append(attention(qd, kd, vd, causal=True))
        scores = (qd @ kd.transpose(-2, -1)) * qd.shape[-1] ** -0.5
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        lses.append(torch.logsumexp(scores, dim=-1))
        start += n
    return [torch.cat(outs, dim=1), torch.cat(lses, dim=1)]


def _single_process(run: RealRun) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The reference tensors, and the reference's forward+backward time beside the GEMM (one
    thread, as each rank)."""
    q, k, v, w = _inputs(run)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = _reference(*leaves, run.doc_lengths)
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref = {"out": out.detach(), "lse": lse.detach(), "dq": grads[0], "dk": grads[1], "dv": grads[2]}

    def fwd_bwd() -> None:
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        o, _ = _reference(*ins, run.doc_lengths)
        torch.autograd.grad((o * w).sum(), ins)

    a, b = torch.randn(run.gemm_n, run.gemm_n), torch.randn(run.gemm_n, run.gemm_n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        times = time_interleaved(
            {"single_process": fwd_bwd, "gemm": lambda: a @ b}, warmup=1, repeats=run.repeats
        )
    finally:
        torch.set_num_threads(threads)
    return ref, {"time_ms": times["single_process"], "gemm_gflops": _gflops(run.gemm_n, times["gemm"]["min"])}


def _gflops(n: int, ms: float) -> float:
    return 2 * n**3 / (ms * 1e-3) / 1e9


def _worker(rank: int, run: RealRun, port: int, ref_path: str, out_path: str) -> None:
    """One rank: run every planner, check it, count its bytes, time it (interleaved rounds)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=run.world, timeout=timedelta(seconds=120))
    try:
        ref = torch.load(ref_path)
        q, k, v, w = _inputs(run)
        n = sum(run.doc_lengths) // run.world
        rows = slice(rank * n, (rank + 1) * n)
        local = [t[:, rows].contiguous() for t in (q, k, v)]
        modules = {
            p: DisaggregatedAttention(planner=p, tolerance=run.tolerance, min_chunk=run.min_chunk)
            for p in PLANNERS
        }
        results: dict[str, dict[str, Any]] = {}
        for name, module in modules.items():
            ins = [t.clone().requires_grad_() for t in local]
            with count_sent_bytes() as meter:
                out, lse = module(*ins, run.doc_lengths)
                forward = meter.bytes
                (out * w[:, rows]).sum().backward()
            got = {"out": out, "lse": lse, "dq": ins[0].grad, "dk": ins[1].grad, "dv": ins[2].grad}
            errors = {key: float((got[key].detach() - ref[key][:, rows]).abs().max()) for key in got}
            close = all(
                torch.allclose(got[key].detach(), ref[key][:, rows], rtol=1e-7, atol=1e-7) for key in got
            )
            results[name] = {"sent_forward": forward, "sent_total": meter.bytes, "max_abs_error": errors}
            results[name]["allclose"] = close

        def call(module: DisaggregatedAttention) -> None:
            ins = [t.clone().requires_grad_() for t in local]
            out, _ = module(*ins, run.doc_lengths)
            (out * w[:, rows]).sum().backward()

        a, b = torch.randn(run.gemm_n, run.gemm_n), torch.randn(run.gemm_n, run.gemm_n)
        fns = {name: (lambda m=module: call(m)) for name, module in modules.items()}
        times = time_interleaved({**fns, "gemm": lambda: a @ b}, warmup=1, repeats=run.repeats)
        mine = {"rank": rank, "planners": results, "times_ms": times}
        every: list[Any] = [None] * run.world
        dist.all_gather_object(every, mine)
        if rank == 0:
            Path(out_path).write_text(json.dumps(every))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_gloo(run: RealRun) -> dict[str, Any]:
    """Run ``run`` (see the module docstring); returns the measured numbers and the plans' own
    counts (``predicted_bytes``: forward and forward+backward from :meth:`CoreAttentionPlan.traffic`)."""
    ref, single = _single_process(run)
    shape = AttentionShape(run.heads, run.heads, run.head_dim, 8, 8)
    plans = {
        p: DisaggregatedAttention(planner=p, tolerance=run.tolerance, min_chunk=run.min_chunk).plan(
            run.doc_lengths, run.world, shape
        )
        for p in PLANNERS
    }
    with tempfile.TemporaryDirectory(prefix="attnzoo-gloo-") as tmp:
        ref_path, out_path = str(Path(tmp, "ref.pt")), str(Path(tmp, "ranks.json"))
        torch.save(ref, ref_path)
        context = mp.start_processes(
            _worker,
            args=(run, _free_port(), ref_path, out_path),
            nprocs=run.world,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + run.deadline_s
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(
                    f"the gloo run on {run.world} ranks did not finish within {run.deadline_s:.0f} s"
                )
        ranks = json.loads(Path(out_path).read_text())
    planners = {}
    for p, plan in plans.items():
        traffic = plan.traffic()
        per_rank = [r["planners"][p] for r in ranks]
        planners[p] = {
            "imbalance": plan.imbalance,
            "tasks": len(plan.tasks),
            "predicted_bytes": {
                "forward": traffic.forward_bytes,
                "total": traffic.forward_bytes + traffic.backward_bytes,
            },
            "sent_bytes": {
                "forward": sum(r["sent_forward"] for r in per_rank),
                "total": sum(r["sent_total"] for r in per_rank),
                "per_rank_total": [r["sent_total"] for r in per_rank],
            },
            "allclose": all(r["allclose"] for r in per_rank),
            "max_abs_error": {
                k: max(r["max_abs_error"][k] for r in per_rank) for k in per_rank[0]["max_abs_error"]
            },
            "time_ms_min_per_rank": [r["times_ms"][p]["min"] for r in ranks],
        }
    gemm = [_gflops(run.gemm_n, r["times_ms"]["gemm"]["min"]) for r in ranks]
    return {
        "config": asdict(run),
        "single_process": single,
        "planners": planners,
        "gemm_gflops_per_rank": gemm,
    }
