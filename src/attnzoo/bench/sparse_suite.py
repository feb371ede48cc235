"""Benchmark of attnzoo's sparse softmax kernels against FlexAttention, NATTEN and masked SDPA.

``attnzoo bench --suite sparse`` measures every case of :mod:`attnzoo.bench.sparse_cases` (1-, 2-
and 3-D neighbourhoods with dilation and causal, sliding windows, S2 groups, region attention,
bi-level routing) with four contenders computing the same function:

* ``attnzoo``: the attnzoo kernel (its forward may run on compiled Flex where
  :mod:`attnzoo.kernels.flex_dispatch` says Flex wins; the path taken is recorded per case);
* ``flex``: ``torch.compile(flex_attention)`` with the block mask of the case's ``mask_mod``;
* ``natten``: ``natten.na1d/na2d/na3d`` (neighbourhoods, and causal sliding windows, whose windows
  are NATTEN's causal ones); other patterns have no NATTEN kernel;
* ``sdpa``: ``scaled_dot_product_attention`` with the dense ``N x N`` boolean mask.

Per case all contenders and an ``n x n`` fp32 GEMM are timed in the same process, interleaved:
each is called once untimed (compiled Flex and attnzoo twice: the first call compiles Flex, which
attnzoo's forward may dispatch to), then every round calls
each once in turn, so that a change of machine load reaches all alike; the minimum over the rounds
is reported. Forward runs under ``no_grad``; forward+backward is ``torch.autograd.grad`` of the
output, timed for every contender whose CPU path has a backward (the others are reported with the
error they raise). Useful FLOPs are ``4 pairs d`` per head forward (``pairs`` = the pattern's
(query, key) pairs, ``N k`` for a non-causal neighbourhood of ``k`` keys) and 2.5 times that
backward; ``% of peak`` is that rate at the minimum time over the GEMM's rate at its minimum in the
same rounds. A contender is skipped, with the reason recorded, when its dense cost alone predicts
more than the per-call cap at the GEMM's rate or more memory than the memory cap, when one call
exceeds the cap (and then at every larger N of the series; of the kernel, for the dense
contenders), when 3.5 times its forward exceeds the cap (forward+backward), or once the suite's
time budget is used.
Peak memory (:class:`attnzoo.bench.measure.MemoryProbe`) is measured after all timings, one call
per contender, because the probe's allocator settings would slow the timings.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from attnzoo.bench.measure import MemoryProbe, time_call, time_interleaved
from attnzoo.bench.runner import machine_metadata
from attnzoo.bench.sparse_cases import (
    PRESETS,
    Case,
    KernelCall,
    Skip,
    attnzoo_call,
    block_mask,
    dense_mask,
    flex_call,
    make_inputs,
    mask_mod,
    natten_call,
    pairs,
)
from attnzoo.kernels import flex_dispatch

__all__ = ["CONTENDERS", "SPARSE_PRESETS", "SparseConfig", "run_sparse_suite"]

CONTENDERS = ("attnzoo", "flex", "natten", "sdpa")
DENSE = ("natten", "sdpa")
"""Contenders whose CPU cost is that of dense attention: NATTEN's CPU path is eager Flex."""
BACKWARD_FLOP_FACTOR = 2.5
WARM_TWICE = ("attnzoo", "flex")
"""Contenders called twice before timing: compiled Flex compiles on its first call, and so does
attnzoo's forward where it dispatches to compiled Flex."""


@dataclass(frozen=True)
class SparseConfig:
    """How the sparse suite measures.

    Attributes:
        preset: name of the preset the config came from.
        cases: the shapes (:data:`attnzoo.bench.sparse_cases.PRESETS`).
        heads / head_dim: ``h x d`` of every case (batch 1, fp32).
        contenders: which of :data:`CONTENDERS` run.
        repeats: interleaved timed rounds per case (the minimum is reported).
        call_cap_s: a contender whose one call takes (or is predicted to take) longer is skipped.
        caps: per-contender overrides of ``call_cap_s``.
        memory_cap_mib: a dense contender whose ``N x N`` tensors would need more is skipped.
        budget_s: cases that would start after this much of the run are skipped.
        gemm_n: size of the reference GEMM.
        backward: also time forward+backward.
    """

    preset: str = "custom"
    cases: tuple[Case, ...] = PRESETS["tiny"]
    heads: int = 8
    head_dim: int = 64
    contenders: tuple[str, ...] = CONTENDERS
    repeats: int = 5
    call_cap_s: float = 5.0
    caps: dict[str, float] = field(default_factory=dict)
    memory_cap_mib: float = 2048.0
    budget_s: float = 900.0
    gemm_n: int = 2048
    backward: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def cap(self, contender: str) -> float:
        """The per-call cap of ``contender`` in seconds."""
        return self.caps.get(contender, self.call_cap_s)


SPARSE_PRESETS: dict[str, SparseConfig] = {
    "full": SparseConfig(
        preset="full",
        cases=PRESETS["full"],
        repeats=5,
        call_cap_s=15.0,
        caps={"natten": 1.5, "sdpa": 4.0},
        budget_s=1800.0,
    ),
    "quick": SparseConfig(
        preset="quick", cases=PRESETS["quick"], repeats=3, call_cap_s=2.0, budget_s=60.0, gemm_n=1024
    ),
    "tiny": SparseConfig(
        preset="tiny",
        cases=PRESETS["tiny"],
        heads=2,
        head_dim=8,
        contenders=("attnzoo", "sdpa"),
        repeats=2,
        budget_s=120.0,
        gemm_n=64,
    ),
}


def _contender_call(name: str, case: Case, inputs: dict[str, Any], state: dict[str, Any]) -> KernelCall:
    """The contender's call at ``case``; raises :class:`Skip` when it cannot or must not run."""
    n, (_, h, _, d) = case.n, inputs["q"].shape
    qkv = (inputs["q"], inputs["k"], inputs["v"])
    if name in DENSE:
        rate = state["dense_rate"].get(name)
        dense_s = 4 * n * n * d * h / (rate or state["gemm_flops"])
        if dense_s > state["config"].cap(name):
            at = f"its best {rate / 1e9:.1f} GFLOP/s so far" if rate else "the GEMM rate"
            raise Skip("skipped", f"dense cost predicts {dense_s:.1f} s per call at {at}")
    if name == "attnzoo":
        return attnzoo_call(case, inputs)
    if name == "natten":
        mib = 3 * h * n * n * 4 / 2**20  # CPU NATTEN is eager Flex: dense scores, mask and probabilities
        if mib > state["config"].memory_cap_mib:
            raise Skip("skipped", f"its dense N x N scores need ~{mib:.0f} MiB")
        return natten_call(case, inputs)
    mod = mask_mod(case, inputs)
    if name == "sdpa":
        mib = 5 * n * n / 2**20  # the bool mask and its float form
        if mib > state["config"].memory_cap_mib:
            raise Skip("skipped", f"its dense N x N mask needs ~{mib:.0f} MiB")
        mask = dense_mask(mod, n)
        return KernelCall(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), qkv)
    if case not in state["block_masks"]:
        t0 = time.perf_counter()
        state["block_masks"][case] = block_mask(mod, n, str(inputs["q"].device))
        state["setup_s"] = time.perf_counter() - t0
    return flex_call(qkv, state["block_masks"][case], compiled=not state.get("eager_flex", False))


def _dense_rate(state: dict[str, Any], name: str, n2hd: int, seconds: float) -> None:
    """Record the best dense-attention FLOP rate (``4 N^2 h d`` per call) seen for ``name``."""
    state["dense_rate"][name] = max(4 * n2hd / seconds, state["dense_rate"].get(name, 0.0))


def _forward(call: KernelCall) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return call.fn(*call.tensors)

    return run


def _forward_backward(call: KernelCall, grad: torch.Tensor) -> Callable[[], Any]:
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in call.tensors)
    return lambda: torch.autograd.grad(call.fn(*leaves), leaves, grad)


def _checked(fn: Callable[[], Any], cap_s: float, calls: int = 1) -> tuple[Any, list[float]]:
    """Call ``fn`` ``calls`` times untimed-for-the-result; raise :class:`Skip` if the last exceeds the cap."""
    seconds = []
    out = None
    for _ in range(calls):
        t0 = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t0)
    if seconds[-1] > cap_s:
        raise Skip("skipped", f"one call took {seconds[-1]:.1f} s")
    return out, seconds


def _prepare(
    name: str,
    case: Case,
    inputs: dict[str, Any],
    grad: torch.Tensor,
    ref: list[torch.Tensor],
    fns: dict[str, Callable[[], Any]],
    state: dict[str, Any],
) -> dict[str, Any]:
    """Check contender ``name`` at ``case`` (one call per pass against the cap, its output against
    attnzoo's ``ref``) and add its timed calls to ``fns``; returns its result entry."""
    config: SparseConfig = state["config"]
    passes = ("fwd", "fwdbwd") if config.backward else ("fwd",)
    entry: dict[str, Any] = {}
    try:
        if state.get("flex_error") and name == "flex":
            raise Skip("error", f"an earlier Flex call failed ({state['flex_error']})")
        state["setup_s"] = None
        call = _contender_call(name, case, inputs, state)
    except Skip as skip:
        return {p: {"status": skip.status, "reason": str(skip)} for p in passes}
    if state["setup_s"] is not None:
        entry["block_mask_s"] = state["setup_s"]
    # dense contenders cost the same for every pattern of a kernel, the sparse ones per series
    series = case.kernel if name in DENSE else case.series
    fwd_s = math.nan
    for p in passes:
        over = state["over_cap"].get((name, series, p))
        try:
            if over is not None and case.n >= over:
                raise Skip("skipped", f"over the {config.cap(name):g} s cap at N={over}")
            if p == "fwdbwd" and entry["fwd"]["status"] != "ok":
                raise Skip(entry["fwd"]["status"], f"forward: {entry['fwd']['reason']}")
            if p == "fwd":
                fn = _forward(call)
                with flex_dispatch.recorded() as paths:
                    out, secs = _checked(fn, config.cap(name), calls=2 if name in WARM_TWICE else 1)
                fwd_s = secs[-1]
                if name in DENSE:
                    _dense_rate(state, name, case.n**2 * inputs["q"].shape[1] * inputs["q"].shape[-1], fwd_s)
                flat = call.to_flat(out)
                if name == "attnzoo":
                    ref.append(flat)
                diff = float((flat - ref[0]).abs().max()) if ref else None
                entry["fwd"] = {"status": "ok", "max_abs_diff_vs_attnzoo": diff}
                if name == "attnzoo":
                    entry["fwd"]["path"] = "; ".join(dict.fromkeys(paths)) or "attnzoo kernel"
                if name in WARM_TWICE:
                    entry["first_call_s"] = secs[0]
            else:
                if name in state["backward_error"]:
                    raise Skip("no CPU backward", state["backward_error"][name])
                if (1 + BACKWARD_FLOP_FACTOR) * fwd_s > config.cap(name):
                    raise Skip("skipped", f"{1 + BACKWARD_FLOP_FACTOR:g} x its {fwd_s:.1f} s forward")
                fn = _forward_backward(call, grad.view_as(call.tensors[0]))
                _checked(fn, config.cap(name), calls=2 if name == "flex" else 1)
                entry["fwdbwd"] = {"status": "ok"}
            fns[f"{name}:{p}"] = fn
        except Skip as skip:
            entry[p] = {"status": skip.status, "reason": str(skip)}
            if skip.status == "skipped":
                state["over_cap"][name, series, p] = min(
                    case.n, state["over_cap"].get((name, series, p), case.n)
                )
        except Exception as exc:  # recorded, not raised: one contender's failure must not end the run
            entry[p] = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
            if name == "flex":
                state["flex_error"] = entry[p]["reason"]
    return entry


def _run_case(case: Case, state: dict[str, Any]) -> dict[str, Any]:
    config: SparseConfig = state["config"]
    inputs = make_inputs(case, heads=config.heads, dim=config.head_dim)
    b, h, n, d = inputs["q"].shape
    useful = 4 * pairs(case, inputs) * d * h * b
    row: dict[str, Any] = {
        **case.header(),
        "pairs": useful // (4 * d * h * b),
        "useful_flops_fwd": useful,
        "useful_flops_fwdbwd": useful * (1 + BACKWARD_FLOP_FACTOR),
        "contenders": {},
    }
    fns: dict[str, Callable[[], Any]] = {}
    grad = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(1))
    ref: list[torch.Tensor] = []
    for name in config.contenders:
        row["contenders"][name] = _prepare(name, case, inputs, grad, ref, fns, state)
    gemm_a, gemm_b = (torch.randn(config.gemm_n, config.gemm_n) for _ in range(2))
    fns["gemm"] = lambda: gemm_a @ gemm_b
    timing = time_interleaved(fns, warmup=0, repeats=config.repeats)
    gemm = timing.pop("gemm")
    gemm_flops = 2 * config.gemm_n**3 / (gemm["min"] * 1e-3)
    row["gemm"] = {"n": config.gemm_n, "min_ms": gemm["min"], "gflops": gemm_flops / 1e9}
    for key, t in timing.items():
        name, p = key.split(":")
        flops = row["useful_flops_fwd" if p == "fwd" else "useful_flops_fwdbwd"]
        row["contenders"][name][p].update(
            min_ms=t["min"],
            median_ms=t["median"],
            runs=t["runs"],
            pct_peak=100 * flops / (t["min"] * 1e-3) / gemm_flops,
        )
        if name in DENSE and p == "fwd":
            _dense_rate(state, name, n * n * h * d, t["min"] * 1e-3)
    return row


def _memory_pass(rows: list[dict[str, Any]], state: dict[str, Any]) -> None:
    """Peak MiB of one call of every timed contender and pass (after all timings)."""
    config: SparseConfig = state["config"]
    probe = MemoryProbe()
    for case, row in zip(config.cases, rows):
        if time.perf_counter() - state["start"] > config.budget_s:
            row["memory_skipped"] = "suite time budget used up"
            continue
        inputs = make_inputs(case, heads=config.heads, dim=config.head_dim)
        grad = torch.randn(inputs["q"].shape, generator=torch.Generator().manual_seed(1))
        for name, entry in row["contenders"].items():
            timed = [p for p in ("fwd", "fwdbwd") if entry.get(p, {}).get("status") == "ok"]
            if not timed:
                continue
            call = _contender_call(name, case, inputs, state)
            for p in timed:
                fn = _forward(call) if p == "fwd" else _forward_backward(call, grad.view_as(call.tensors[0]))
                if name == "flex":
                    fn()
                probe.start()
                fn()
                entry[p]["peak_mib"] = probe.peak_mb()


@contextlib.contextmanager
def _compile_limits() -> Iterator[None]:
    """Every case compiles Flex for its shapes: lift dynamo's recompile limit for the run, and make
    reaching it an error instead of a silent fall-back to eager."""
    import torch._dynamo

    with torch._dynamo.config.patch(
        recompile_limit=100_000, accumulated_recompile_limit=100_000, fail_on_recompile_limit_hit=True
    ):
        yield


def _backward_errors(config: SparseConfig) -> dict[str, str]:
    """Contenders whose CPU path has no backward, with the first sentence of the error they raise
    (tried once on the smallest case). Flex is tried uncompiled: a compiled call that raises leaves
    dynamo running that code eagerly afterwards, which would time eager Flex as compiled Flex."""
    errors: dict[str, str] = {}
    case = min(config.cases, key=lambda c: c.n)
    inputs = make_inputs(case, heads=config.heads, dim=config.head_dim)
    state = {
        "config": replace(config, call_cap_s=math.inf, caps={}),
        "block_masks": {},
        "gemm_flops": 1.0,
        "dense_rate": {},
        "eager_flex": True,
    }
    for name in config.contenders:
        if name == "attnzoo":
            continue
        try:
            call = _contender_call(name, case, inputs, state)
            _forward_backward(call, torch.ones_like(call.tensors[0]))()
        except Skip:
            continue
        except NotImplementedError as exc:
            errors[name] = str(exc).split(". ")[0]
    return errors


def run_sparse_suite(config: SparseConfig, *, progress: bool = False) -> dict[str, Any]:
    """Measure every case of ``config``; returns the JSON-ready result (see the module docstring)."""
    unknown = set(config.contenders) - set(CONTENDERS)
    if unknown or not config.contenders:
        raise ValueError(f"contenders must be a non-empty subset of {CONTENDERS}, got {config.contenders!r}")
    load_before = list(os.getloadavg())
    start = time.perf_counter()
    gemm_a, gemm_b = (torch.randn(config.gemm_n, config.gemm_n) for _ in range(2))
    gemm = time_call(lambda: gemm_a @ gemm_b, warmup=1, repeats=3, budget_s=5.0)
    state: dict[str, Any] = {
        "config": config,
        "start": start,
        "gemm_flops": 2 * config.gemm_n**3 / (gemm["min"] * 1e-3),
        "block_masks": {},
        "over_cap": {},
        "dense_rate": {},
    }
    rows = []
    with _compile_limits():
        state["backward_error"] = _backward_errors(config) if config.backward else {}
        for case in config.cases:
            if time.perf_counter() - start > 0.75 * config.budget_s:
                rows.append({**case.header(), "skipped": "suite time budget used up", "contenders": {}})
                continue
            rows.append(_run_case(case, state))
            if progress:
                print(f"{case.kernel:<16} {case.label:<48} {time.perf_counter() - start:6.0f} s", flush=True)
        _memory_pass(rows, state)
    natten = importlib.import_module("natten") if importlib.util.find_spec("natten") else None
    return {
        "meta": {
            **machine_metadata(torch.get_num_threads()),
            "natten": natten.__version__ if natten else None,
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
            "wall_s": time.perf_counter() - start,
        },
        "config": {**asdict(config), "cases": len(config.cases)},
        "cases": rows,
    }
