"""Measure one mechanism in the current process: parameters, FLOPs, latency, peak memory.

Meant to run inside a fresh worker process (see :mod:`attnzoo.bench.runner`). Peak memory is the
growth of the process's resident-set high-water mark over the resident set just before the call:
on Linux the mark is reset before each measurement (``/proc/self/clear_refs``), freed heap memory
is handed back to the system (``malloc_trim``) and large blocks are mmap-allocated (``mallopt``),
so that memory cached by one measurement cannot hide the next one's allocations.
FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and
attention; elementwise work is not counted). The counting pass runs SDPA on its math backend,
because the CPU flash kernel has no FLOP formula and would count as zero.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import inspect
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import attnzoo
from attnzoo.inputs import Example, example_inputs

__all__ = [
    "BENCH_RESERVED_KEYS",
    "EQUAL_HEADS",
    "EQUAL_WIDTHS",
    "MemoryProbe",
    "at_equal_width",
    "bench_inputs",
    "bench_kwargs",
    "bench_variants",
    "cost_model",
    "count_flops",
    "measure_size",
    "time_call",
    "time_interleaved",
]

BENCH_RESERVED_KEYS = ("sizes", "variants", "queries", "equal_width", "cost_model")
#: query tokens of a cross-attention benchmark (its sweep grows the context)
DEFAULT_QUERIES = 64


def bench_kwargs(name: str) -> dict[str, Any]:
    """Constructor kwargs of ``name``'s benchmark configuration (card.bench minus reserved keys)."""
    return {k: v for k, v in attnzoo.card(name).bench.items() if k not in BENCH_RESERVED_KEYS}


def cost_model(name: str) -> Callable[[dict[str, Any], int, int], dict[str, float]] | None:
    """The function named by ``card.bench["cost_model"]`` (``"package.module:function"``), or ``None``.

    It takes a benchmarked configuration, the token count N and the batch, and returns labelled
    modelled quantities (e.g. passes, bytes of memory traffic) that the report prints beside the
    measured cost of each size (see :func:`attnzoo.kernels.fusemax.bench_cost_model`)."""
    spec = attnzoo.card(name).bench.get("cost_model")
    if spec is None:
        return None
    module, sep, attr = str(spec).partition(":")
    if not sep:
        raise ValueError(f"card {name!r}: bench['cost_model'] must be 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), attr)


EQUAL_WIDTHS: dict[str, int] = {
    "token_mixer": 256,
    "cross_attention": 256,
    "feature_map": 64,
    "gate": 64,
    "pooling": 256,
}
"""The width every mechanism of a family gets in an equal-width benchmark."""
EQUAL_HEADS = 4
"""The head count every mechanism with ``num_heads`` gets in an equal-width benchmark."""


def at_equal_width(name: str, kwargs: dict[str, Any], label: str = "") -> dict[str, Any]:
    """``kwargs`` with the family's width (:data:`EQUAL_WIDTHS`: ``dim``/``channels``, and
    ``context_dim``/``gate_channels`` alike) and :data:`EQUAL_HEADS` heads, then the card's
    ``bench["equal_width"]`` overrides; every other option stays the card's, so mechanisms of a
    family are compared at the same size. For the benchmark variant ``label`` (of
    :func:`bench_variants`) the variant's own overrides are applied last: a variant that is defined
    by its head count (e.g. ``minimal_attention[merged-1head]``) keeps it."""
    card = attnzoo.card(name)
    width = EQUAL_WIDTHS[card.family]
    params = inspect.signature(attnzoo.mechanism_class(name).__init__).parameters
    out = dict(kwargs)
    for key in ("dim", "channels", "context_dim", "gate_channels"):
        if key in params and (key in out or params[key].default is inspect.Parameter.empty):
            out[key] = width
    if "num_heads" in params:
        out["num_heads"] = EQUAL_HEADS
    out.update(card.bench.get("equal_width", {}))
    if label:
        out.update(card.bench["variants"][label])
    return out


def bench_variants(name: str) -> dict[str, dict[str, Any]]:
    """Labelled constructor configurations to benchmark: ``{"": kwargs}``, or one entry per
    ``card.bench["variants"]`` label (each label's overrides applied to the base kwargs)."""
    base = bench_kwargs(name)
    variants = attnzoo.card(name).bench.get("variants")
    if not variants:
        return {"": base}
    return {label: {**base, **overrides} for label, overrides in variants.items()}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` as counted by FlopCounterMode, with SDPA on its (countable) math backend."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _counted(flops: int) -> int | None:
    """``None`` for a count of 0: the work exists but is elementwise, which FlopCounterMode cannot
    see, so the report says "not counted" instead of claiming the mechanism is free."""
    return flops or None


class MemoryProbe:
    """Peak resident memory of a block of work, in MiB above the resident set before it."""

    M_MMAP_THRESHOLD = -3

    def __init__(self) -> None:
        self.resettable = sys.platform.startswith("linux")
        path = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(path) if path and self.resettable else None
        if self._libc is not None:
            self._libc.mallopt(self.M_MMAP_THRESHOLD, 128 * 1024)
        self._base = 0.0

    @staticmethod
    def _status_mb(field: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"{field} not found in /proc/self/status")

    def start(self) -> None:
        """Mark the baseline and reset the high-water mark."""
        if self._libc is not None:
            self._libc.malloc_trim(0)
        if self.resettable:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = self._status_mb("VmRSS")
        else:
            self._base = self._maxrss_mb()

    def peak_mb(self) -> float:
        """Peak growth since :meth:`start`."""
        peak = self._status_mb("VmHWM") if self.resettable else self._maxrss_mb()
        return max(0.0, peak - self._base)

    @staticmethod
    def _maxrss_mb() -> float:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def time_call(fn: Callable[[], Any], *, warmup: int, repeats: int, budget_s: float) -> dict[str, float]:
    """Median, quartiles and min of ``fn``'s wall time (ms), ``repeats`` runs or fewer within ``budget_s``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    qs = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {
        "median": statistics.median(times),
        "q25": qs[0],
        "q75": qs[2],
        "min": min(times),
        "runs": len(times),
    }


def time_interleaved(
    fns: dict[str, Callable[[], Any]], *, warmup: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Wall time (ms) of every ``fns`` entry: ``warmup`` untimed calls each, then ``repeats`` rounds
    that call each once in turn, so that load changes during the run reach all entries alike;
    min, median and runs per entry."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t0) * 1e3)
    return {k: {"min": min(v), "median": statistics.median(v), "runs": len(v)} for k, v in times.items()}


def _outputs_sum(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    return sum(o.float().sum() for o in out if isinstance(o, torch.Tensor) and o.is_floating_point())


def _forward(module: torch.nn.Module, ex: Example) -> Any:
    return module(*ex.args, **ex.kwargs)


def _fwd_bwd(module: torch.nn.Module, ex: Example) -> None:
    module.zero_grad(set_to_none=True)
    _outputs_sum(_forward(module, ex)).backward()


def bench_inputs(module: torch.nn.Module, size: tuple[int, ...], batch: int) -> Example:
    """The seeded inputs every benchmark times ``module`` on at spatial ``size``: for
    cross-attention ``size`` is the context's and the queries are ``card.bench["queries"]``
    tokens (default :data:`DEFAULT_QUERIES`)."""
    gen = torch.Generator().manual_seed(0)
    if module.card.family == "cross_attention":
        queries = int(module.card.bench.get("queries", DEFAULT_QUERIES))
        return example_inputs(module, batch=batch, size=(queries,), context_size=size, generator=gen)
    return example_inputs(module, batch=batch, size=size, generator=gen)


def measure_size(
    module: torch.nn.Module,
    size: tuple[int, ...],
    *,
    batch: int,
    backward: bool,
    warmup: int,
    repeats: int,
    budget_s: float,
    probe: MemoryProbe,
) -> dict[str, Any]:
    """Measure ``module`` at spatial ``size``: FLOPs, latency and peak memory, forward
    (under ``no_grad``) and, with ``backward``, forward+backward of the summed outputs.

    For cross-attention ``size`` is the context's size and the queries are
    ``card.bench["queries"]`` tokens (default :data:`DEFAULT_QUERIES`)."""
    ex = bench_inputs(module, size, batch)
    n = 1
    for s in size:
        n *= s
    row: dict[str, Any] = {"size": list(size), "n": n, "batch": batch, "status": "ok"}
    with torch.no_grad():
        row["flops_fwd"] = _counted(count_flops(lambda: _forward(module, ex)))
        probe.start()
        _forward(module, ex)
        row["peak_fwd_mb"] = probe.peak_mb()
        row["fwd_ms"] = time_call(
            lambda: _forward(module, ex), warmup=warmup, repeats=repeats, budget_s=budget_s
        )
    if backward:
        for t in ex.tensors():
            t.requires_grad_(True)
        row["flops_fwdbwd"] = _counted(count_flops(lambda: _fwd_bwd(module, ex)))
        module.zero_grad(set_to_none=True)
        probe.start()
        _fwd_bwd(module, ex)
        row["peak_fwdbwd_mb"] = probe.peak_mb()
        row["fwdbwd_ms"] = time_call(
            lambda: _fwd_bwd(module, ex), warmup=1, repeats=repeats, budget_s=budget_s
        )
    return row
