"""Kernel-level benchmark of the linear-attention family: chunked vs naive forms and scaling.

Answers, in one run on one machine (``attnzoo bench --suite linear``):

* how much faster the chunked form is than the naive token-by-token recurrence, per gate type, at
  one N (:func:`attnzoo.kernels.linear.linear_attention_recurrent`);
* how much faster attnzoo is than the algorithm of each official reference of the family, at one N:

  - Lightning Attention's torch reference: the quadratic masked-decay form, which builds an
    ``N x N`` decay mask per call (:func:`quadratic_decay_reference`);
  - ViG's ``naive_recurrent_gla``: a Python loop over tokens with an elementwise outer product and
    a sum-reduction per step (:func:`naive_gla_loop_reference`);
  - Zoology's Based ``train_view="linear"``: the 1 + d + d^2 outer-product Taylor features and a
    cumulative sum over a ``(B, h, N, D, d_v)`` tensor (:func:`based_cumsum_reference`), whose
    peak memory is measured beside its time;

* the empirical scaling exponent of the chunked forward over a range of N.

The reference forms are attnzoo's own re-creations of those algorithms (no official code is run;
tests check each against attnzoo's kernels in float64). Speed-ups are ratios of medians measured in
the same process, one after the other, so that machine load affects both sides alike; the system
load average before and after the run is recorded with the result.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnzoo.bench.measure import MemoryProbe, time_interleaved
from attnzoo.kernels.linear import linear_attention_chunked, linear_attention_recurrent
from attnzoo.mechanisms.token_mixer.based import BasedAttention
from attnzoo.runs import replace_outputs

__all__ = [
    "GATES",
    "based_cumsum_reference",
    "naive_gla_loop_reference",
    "quadratic_decay_reference",
    "run_linear_suite",
    "suite_markdown",
    "write_linear_outputs",
]

OUTPUTS = ("linear.json", "linear.md")

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


def naive_gla_loop_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gate: torch.Tensor
) -> torch.Tensor:
    """GLA by a Python loop over tokens, the algorithm of ViG's ``naive_recurrent_gla``.

    ``q, k, log_gate: (B, h, N, d_k)``, ``v: (B, h, N, d_v)`` -> ``o (B, h, N, d_v)``, with the
    float32 state ``S_t = S_{t-1} * exp(g_t)[:, None] + k_t^T v_t`` built as an elementwise outer
    product and ``o_t = sum_k (q_t d_k^{-1/2})[:, None] * S_t`` as a sum-reduction, one step per token.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v, log_gate = (t.to(dtype) for t in (q, k, v, log_gate))
    b, h, n, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    out = torch.zeros_like(v)
    for t in range(n):
        outer = k[:, :, t, :, None] * v[:, :, t, None, :]
        state = state * log_gate[:, :, t].exp()[..., None] + outer
        out[:, :, t] = (q[:, :, t, :, None] * dk**-0.5 * state).sum(-2)
    return out


def _outer_taylor(x: torch.Tensor) -> torch.Tensor:
    """``(..., d) -> (..., 1 + d + d^2)``: the Taylor features with all ``d^2`` outer-product entries."""
    d = x.shape[-1]
    square = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2 * d)
    return torch.cat([x.new_ones(*x.shape[:-1], 1), x / d**0.25, square], dim=-1)


def based_cumsum_reference(module: BasedAttention, x: torch.Tensor) -> torch.Tensor:
    """``module``'s causal Based output by Zoology's ``train_view="linear"`` algorithm.

    ``x: (B, N, C)`` -> ``(B, N, C)``. Features ``phi(q), phi(k): (B, h, N, D)`` use the
    ``1 + d + d^2`` outer-product map; the causal sums are a cumulative sum over the
    ``(B, h, N, D, d_v)`` tensor of per-token ``phi(k_j)^T v_j`` products, read out by a
    broadcast product and a sum over ``D``.
    """
    b, n, _ = x.shape
    h = module.num_heads
    q = _outer_taylor(module.proj_q(x).view(b, n, h, module.feature_dim).transpose(1, 2))
    k = _outer_taylor(module.proj_k(x).view(b, n, h, module.feature_dim).transpose(1, 2))
    v = module.proj_v(x).view(b, n, h, module.head_dim).transpose(1, 2)
    kv = (k[..., :, None] * v[..., None, :]).cumsum(dim=2)  # (B, h, N, D, d_v)
    num = (q[..., :, None] * kv).sum(dim=-2)
    den = (q * k.cumsum(dim=2)).sum(dim=-1, keepdim=True)
    y = num / (den + module.eps)
    return module.proj_o(y.transpose(1, 2).reshape(b, n, h * module.head_dim))


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


def _peak_mib(fn: Any) -> float:
    probe = MemoryProbe()
    probe.start()
    fn()
    return probe.peak_mb()


def _slope(ns: tuple[int, ...], times: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(times), 1)[0]) if len(ns) > 1 else math.nan


def run_linear_suite(
    *,
    heads: int = 8,
    dim: int = 64,
    naive_n: int = 8192,
    reference_n: int = 4096,
    scaling_ns: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768),
    based: dict[str, int] | None = None,
    repeats: int = 5,
    gemm_n: int = 2048,
) -> dict[str, Any]:
    """Measure the suite; returns a JSON-ready dict (times in ms: minimum and median over
    ``repeats`` interleaved rounds; memory in MiB).

    ``heads x dim`` is the per-head shape of the kernel comparisons (batch 1, fp32); ``based`` the
    :class:`BasedAttention` configuration of the Based comparison (default: its card's bench config,
    ``dim=128, num_heads=1, feature_dim=16``); ``gemm_n`` the size of the reference GEMM.
    """
    based = {"dim": 128, "num_heads": 1, "feature_dim": 16} if based is None else based
    gemm_a, gemm_b = torch.randn(gemm_n, gemm_n), torch.randn(gemm_n, gemm_n)
    out: dict[str, Any] = {
        "shape": {"batch": 1, "heads": heads, "head_dim": dim},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "load_average_before": list(os.getloadavg()),
        "gemm": {"n": gemm_n, "gflops": []},
        "naive_vs_chunked": [],
        "references": [],
        "scaling": [],
    }

    def interleaved(fns: dict[Any, Callable[[], Any]]) -> dict[Any, dict[str, float]]:
        timing = time_interleaved({**fns, "gemm": lambda: gemm_a @ gemm_b}, warmup=1, repeats=repeats)
        out["gemm"]["gflops"].append(2 * gemm_n**3 / (timing.pop("gemm")["min"] * 1e-3) / 1e9)
        return timing

    def kernel(fn: Any, x: dict[str, Any], **extra: Any) -> Callable[[], Any]:
        return lambda: fn(x["q"], x["k"], x["v"], log_gate=x["log_gate"], **extra)

    def reference_row(
        name: str, algorithm: str, ref: dict[str, float], ours: dict[str, float]
    ) -> dict[str, Any]:
        return {
            "reference": name,
            "algorithm": algorithm,
            "n": reference_n,
            "reference_ms": ref["min"],
            "attnzoo_ms": ours["min"],
            "reference_median_ms": ref["median"],
            "attnzoo_median_ms": ours["median"],
            "speedup": ref["min"] / ours["min"],
        }

    with torch.no_grad():
        xs = {gate: _inputs(naive_n, gate, heads=heads, dim=dim) for gate in GATES}
        fns: dict[Any, Callable[[], Any]] = {}
        for gate, x in xs.items():
            fns["naive", gate] = kernel(linear_attention_recurrent, x)
            fns["chunked", gate] = kernel(linear_attention_chunked, x)
        t = interleaved(fns)
        for gate in GATES:
            naive, chunked = t["naive", gate], t["chunked", gate]
            out["naive_vs_chunked"].append(
                {
                    "gate": gate,
                    "n": naive_n,
                    "naive_ms": naive["min"],
                    "chunked_ms": chunked["min"],
                    "naive_median_ms": naive["median"],
                    "chunked_median_ms": chunked["median"],
                    "speedup": naive["min"] / chunked["min"],
                }
            )
        xl = _inputs(reference_n, "per_head", heads=heads, dim=dim)
        xg = _inputs(reference_n, "per_key", heads=heads, dim=dim)
        module = BasedAttention(**based).eval()
        xb = torch.randn(1, reference_n, based["dim"], generator=torch.Generator().manual_seed(0))
        t = interleaved(
            {
                "lightning_ref": lambda: quadratic_decay_reference(xl["q"], xl["k"], xl["v"], xl["slopes"]),
                "lightning": kernel(linear_attention_chunked, xl),
                "gla_ref": lambda: naive_gla_loop_reference(xg["q"], xg["k"], xg["v"], xg["log_gate"]),
                "gla": kernel(linear_attention_chunked, xg, scale=dim**-0.5),
                "based_ref": lambda: based_cumsum_reference(module, xb),
                "based": lambda: module(xb),
            }
        )
        out["references"] += [
            reference_row(
                "Lightning Attention (torch reference)",
                "quadratic masked-decay form, N x N mask built per call",
                t["lightning_ref"],
                t["lightning"],
            ),
            reference_row(
                "ViG naive_recurrent_gla", "Python loop over tokens, per-key gates", t["gla_ref"], t["gla"]
            ),
        ]
        row = reference_row(
            "Zoology Based (train_view='linear')",
            "d^2-wide Taylor features, cumsum over a (B, h, N, D, d_v) tensor",
            t["based_ref"],
            t["based"],
        )
        row["config"] = dict(based)
        out["references"].append(row)
        fns = {}
        for gate in GATES:
            for n in scaling_ns:
                fns[gate, n] = kernel(linear_attention_chunked, _inputs(n, gate, heads=heads, dim=dim))
        t = interleaved(fns)
        for gate in GATES:
            mins = [t[gate, n]["min"] for n in scaling_ns]
            out["scaling"].append(
                {
                    "gate": gate,
                    "n": list(scaling_ns),
                    "chunked_ms": mins,
                    "exponent": _slope(scaling_ns, mins),
                }
            )
        # memory last: the probe switches the allocator to mmap for large blocks, which slows later timings
        row["reference_mib"] = _peak_mib(lambda: based_cumsum_reference(module, xb))
        row["attnzoo_mib"] = _peak_mib(lambda: module(xb))
    out["load_average_after"] = list(os.getloadavg())
    return out


def suite_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """The suite's result as Markdown tables (``command``: the command line stated in the report)."""
    s = result["shape"]
    load = ", ".join(f"{a:.2f}" for a in result["load_average_before"] + result["load_average_after"])
    gemm = result["gemm"]
    rates = f"{min(gemm['gflops']):.0f}-{max(gemm['gflops']):.0f}"
    lines = [
        "# Linear-attention kernels",
        "",
        *([f"Command: `{command}`.", ""] if command else []),
        f"batch {s['batch']}, {s['heads']} heads x {s['head_dim']}, fp32, forward, "
        f"{result['threads']} thread(s), torch {result['torch']}. Each table is timed interleaved: one "
        f"untimed call each, then {result['repeats']} rounds calling every entry of the table and a "
        f"{gemm['n']}x{gemm['n']} fp32 GEMM once in turn; times are the minimum over the rounds, speed-ups "
        f"ratios of minima. The GEMM ran at {rates} GFLOP/s over the three tables. All reference forms are "
        "attnzoo's own re-creations of the algorithms the official references use, timed in the same run. "
        f"Load average (1, 5, 15 min) before and after: {load}.",
        "",
        "| gate | N | naive recurrence ms | chunked ms | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["naive_vs_chunked"]:
        lines.append(
            f"| {r['gate']} | {r['n']} | {r['naive_ms']:.1f} | {r['chunked_ms']:.1f} | {r['speedup']:.1f}x |"
        )
    lines += [
        "",
        "| official reference | its algorithm | N | reference ms | attnzoo ms | speed-up "
        "| peak MiB (ref / attnzoo) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["references"]:
        mem = f"{r['reference_mib']:.0f} / {r['attnzoo_mib']:.0f}" if "reference_mib" in r else "–"
        lines.append(
            f"| {r['reference']} | {r['algorithm']} | {r['n']} | {r['reference_ms']:.1f} "
            f"| {r['attnzoo_ms']:.1f} | {r['speedup']:.1f}x | {mem} |"
        )
    lines += [
        "",
        "| gate | " + " | ".join(f"N={n}" for n in result["scaling"][0]["n"]) + " | exponent |",
        "|---|" + "---:|" * (len(result["scaling"][0]["n"]) + 1),
    ]
    for r in result["scaling"]:
        cells = " | ".join(f"{t:.1f}" for t in r["chunked_ms"])
        lines.append(f"| {r['gate']} | {cells} | {r['exponent']:.2f} |")
    return "\n".join(lines) + "\n"


def write_linear_outputs(result: dict[str, Any], out_dir: Path, command: str) -> list[Path]:
    """Write ``linear.json`` and ``linear.md`` (stating ``command``) to ``out_dir``; returns them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "linear.json").write_text(json.dumps({**result, "command": command}, indent=1))
    (out_dir / "linear.md").write_text(suite_markdown(result, command))
    written = [out_dir / name for name in OUTPUTS]
    replace_outputs(out_dir, written, OUTPUTS)
    return written
