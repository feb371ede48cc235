"""Kernel-level benchmark of the linear-attention family: chunked vs naive forms and scaling.

Answers, in one run on one machine (``attnzoo bench --suite linear``):

* how much faster the chunked form is than the naive token-by-token recurrence (the algorithm of
  ViG's ``naive_recurrent_gla`` and of Zoology's recurrent views), per gate type, at one N;
* how much faster it is than the quadratic masked-decay form (the algorithm of Lightning
  Attention's torch reference, which builds an ``N x N`` decay mask per call);
* the empirical scaling exponent of the chunked forward over a range of N.

Both reference forms are attnzoo's own float implementations of those algorithms (no official
code is run); the speed-ups are ratios of medians measured in the same process.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from attnzoo.bench.measure import time_call
from attnzoo.kernels.linear import linear_attention_chunked, linear_attention_recurrent

__all__ = ["GATES", "quadratic_decay_reference", "run_linear_suite", "suite_markdown"]

GATES = ("none", "per_head", "per_key")


def quadratic_decay_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor
) -> torch.Tensor:
    """``O = ((Q K^T) * M) V`` with ``M_ij = exp(-s (i - j))`` for ``j <= i``: the quadratic form
    of causal linear attention with a per-head decay ``s`` (``slopes: (h,)``), building its
    ``(h, N, N)`` decay mask on every call."""
    n = q.shape[-2]
    idx = torch.arange(n, device=q.device, dtype=q.dtype)
    rel = idx[:, None] - idx[None, :]
    mask = torch.exp(-slopes.to(q.dtype)[:, None, None] * rel.clamp(min=0)) * (rel >= 0)
    return ((q @ k.transpose(-2, -1)) * mask) @ v


def _inputs(n: int, gate: str, *, heads: int, dim: int, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, n, dim, generator=g) * dim**-0.5 for _ in range(3))
    slopes = torch.tensor([2.0 ** (-8 * (i + 1) / heads) for i in range(heads)])
    if gate == "none":
        log_gate = None
    elif gate == "per_head":
        log_gate = (-slopes)[None, :, None, None].expand(1, heads, n, 1)
    else:
        log_gate = torch.nn.functional.logsigmoid(torch.randn(1, heads, n, dim, generator=g)) / 16
    return {"q": q, "k": k, "v": v, "log_gate": log_gate, "slopes": slopes}


def run_linear_suite(
    *,
    heads: int = 8,
    dim: int = 64,
    naive_n: int = 8192,
    reference_n: int = 4096,
    scaling_ns: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768),
    repeats: int = 3,
    budget_s: float = 20.0,
) -> dict[str, Any]:
    """Measure the suite; returns a JSON-ready dict (times in ms, medians)."""
    out: dict[str, Any] = {
        "shape": {"batch": 1, "heads": heads, "head_dim": dim},
        "threads": torch.get_num_threads(),
        "naive_vs_chunked": [],
        "quadratic_vs_chunked": {},
        "scaling": [],
    }
    kw = {"warmup": 1, "repeats": repeats, "budget_s": budget_s}

    def timed(fn: Any, x: dict[str, Any]) -> float:
        return time_call(lambda: fn(x["q"], x["k"], x["v"], log_gate=x["log_gate"]), **kw)["median"]

    with torch.no_grad():
        for gate in GATES:
            x = _inputs(naive_n, gate, heads=heads, dim=dim)
            naive = timed(linear_attention_recurrent, x)
            chunked = timed(linear_attention_chunked, x)
            out["naive_vs_chunked"].append(
                {
                    "gate": gate,
                    "n": naive_n,
                    "naive_ms": naive,
                    "chunked_ms": chunked,
                    "speedup": naive / chunked,
                }
            )
        x = _inputs(reference_n, "per_head", heads=heads, dim=dim)
        quad = time_call(lambda: quadratic_decay_reference(x["q"], x["k"], x["v"], x["slopes"]), **kw)[
            "median"
        ]
        chunked = timed(linear_attention_chunked, x)
        out["quadratic_vs_chunked"] = {
            "n": reference_n,
            "quadratic_ms": quad,
            "chunked_ms": chunked,
            "speedup": quad / chunked,
        }
        for gate in GATES:
            medians = [
                timed(linear_attention_chunked, _inputs(n, gate, heads=heads, dim=dim)) for n in scaling_ns
            ]
            slope = (
                float(np.polyfit(np.log(scaling_ns), np.log(medians), 1)[0])
                if len(scaling_ns) > 1
                else math.nan
            )
            out["scaling"].append(
                {"gate": gate, "n": list(scaling_ns), "chunked_ms": medians, "exponent": slope}
            )
    return out


def suite_markdown(result: dict[str, Any]) -> str:
    """The suite's result as Markdown tables."""
    s = result["shape"]
    lines = [
        "# Linear-attention kernels",
        "",
        f"batch {s['batch']}, {s['heads']} heads x {s['head_dim']}, fp32, forward, "
        f"{result['threads']} thread(s); medians; both reference forms are attnzoo's own implementations "
        "of the algorithms the official references use.",
        "",
        "| gate | N | naive recurrence ms | chunked ms | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["naive_vs_chunked"]:
        lines.append(
            f"| {r['gate']} | {r['n']} | {r['naive_ms']:.1f} | {r['chunked_ms']:.1f} | {r['speedup']:.1f}x |"
        )
    q = result["quadratic_vs_chunked"]
    lines += [
        "",
        "| per-head decay | N | quadratic masked-decay ms | chunked ms | speed-up |",
        "|---|---:|---:|---:|---:|",
        f"| Lightning-style | {q['n']} | {q['quadratic_ms']:.1f} | {q['chunked_ms']:.1f} "
        f"| {q['speedup']:.1f}x |",
        "",
        "| gate | " + " | ".join(f"N={n}" for n in result["scaling"][0]["n"]) + " | exponent |",
        "|---|" + "---:|" * (len(result["scaling"][0]["n"]) + 1),
    ]
    for r in result["scaling"]:
        cells = " | ".join(f"{t:.1f}" for t in r["chunked_ms"])
        lines.append(f"| {r['gate']} | {cells} | {r['exponent']:.2f} |")
    return "\n".join(lines) + "\n"
