"""Run benchmark sweeps, one fresh worker process per mechanism.

Workers are forked from a clean fork server (Linux) or spawned (elsewhere), so no allocation,
thread pool or compiled kernel leaks from one mechanism into another. A worker streams one
result row per size; a worker that exceeds its time limit is killed and its missing sizes are
recorded as ``timeout``; one that dies or runs out of memory is recorded as ``oom``/``error``;
the run itself always completes.

With a backend (``attnzoo bench --backend ray``), the unit that is distributed is a whole family:
the mechanisms of a family are compared with each other (one report panel each), so they are
measured one after another by one job on one node, exactly as a local run measures them; a
family's comparison is never split across processes or nodes. Families are independent, so they
run at the same time on different nodes (or on one node that has the CPUs for both: reserve a
node's CPUs per job with ``--ray-cpus`` when families must not share a machine). Each family
records the machine that measured it (``meta["backend"]["groups"]``).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

import attnzoo
from attnzoo.bench.measure import MemoryProbe, at_equal_width, bench_variants, measure_size
from attnzoo.registry import Card, mechanism_class, register

if TYPE_CHECKING:
    from attnzoo.tasks.jobs import Backend

__all__ = ["PRESETS", "BenchConfig", "machine_metadata", "run_benchmarks", "sizes_for", "worker_context"]


@dataclass(frozen=True)
class BenchConfig:
    """How a benchmark run measures.

    Attributes:
        preset: name of the preset the config came from.
        seq_sizes: sequence lengths N for 1-D mechanisms and sets.
        grid_sizes: (H, W) sizes for 2-D mechanisms.
        volume_sizes: (D, H, W) sizes for 3-D mechanisms.
        batch: batch size.
        threads: torch intra-op threads in every worker (pinned and recorded).
        warmup / repeats: timing runs not counted / counted (fewer when ``budget_s`` runs out).
        budget_s: time budget per timing series.
        backward: also measure forward+backward.
        max_ms: stop a mechanism's sweep once its forward median exceeds this.
        timeout_s: wall-clock limit of one mechanism's worker.
        equal_width: benchmark every mechanism of a family at the same width and head count
            (:func:`attnzoo.bench.measure.at_equal_width`) instead of its card's configuration.
    """

    preset: str = "custom"
    seq_sizes: tuple[int, ...] = (256, 1024)
    grid_sizes: tuple[tuple[int, int], ...] = ((14, 14), (28, 28))
    volume_sizes: tuple[tuple[int, int, int], ...] = ((8, 8, 8), (16, 16, 16))
    batch: int = 1
    threads: int = 1
    warmup: int = 1
    repeats: int = 5
    budget_s: float = 0.5
    backward: bool = False
    max_ms: float = 1000.0
    timeout_s: float = 60.0
    equal_width: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, BenchConfig] = {
    "quick": BenchConfig(preset="quick"),
    "full": BenchConfig(
        preset="full",
        seq_sizes=(256, 512, 1024, 2048, 4096, 8192, 16384),
        grid_sizes=((14, 14), (28, 28), (56, 56), (64, 64), (96, 96), (128, 128)),
        volume_sizes=((8, 8, 8), (16, 16, 16), (32, 32, 32)),
        threads=2,
        warmup=2,
        repeats=10,
        budget_s=3.0,
        backward=True,
        max_ms=5000.0,
        timeout_s=600.0,
    ),
}


def sizes_for(card: Card, config: BenchConfig) -> list[tuple[int, ...]]:
    """The sizes ``card`` is swept over (``card.bench['sizes']`` overrides the preset)."""
    if "sizes" in card.bench:
        return [tuple(s) for s in card.bench["sizes"]]
    if card.spatial_dims == 2:
        return [tuple(s) for s in config.grid_sizes]
    if card.spatial_dims == 3:
        return [tuple(s) for s in config.volume_sizes]
    return [(n,) for n in config.seq_sizes]


def machine_metadata(threads: int) -> dict[str, Any]:
    """What a result depends on: CPU, threads, library versions, date."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "attnzoo": attnzoo.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def _worker(
    name: str,
    cls: type,
    card: Card,
    kwargs: dict[str, Any],
    sizes: list[tuple[int, ...]],
    config: BenchConfig,
    conn: Connection,
) -> None:
    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    probe = MemoryProbe()
    try:
        if name not in attnzoo.list_mechanisms():
            register(card)(cls)  # a mechanism registered by user code after the fork server started
        module = attnzoo.create(
            name, **kwargs
        ).eval()  # inference semantics (BatchNorm statistics, no dropout)
        params = sum(p.numel() for p in module.parameters())
        conn.send({"kind": "params", "params": params, "pid": os.getpid()})
        warm = measure_size(
            module,
            sizes[0],
            batch=1,
            backward=config.backward,
            warmup=0,
            repeats=1,
            budget_s=0.0,
            probe=probe,
        )
        del warm
        for size in sizes:
            row = measure_size(
                module,
                size,
                batch=config.batch,
                backward=config.backward,
                warmup=config.warmup,
                repeats=config.repeats,
                budget_s=config.budget_s,
                probe=probe,
            )
            conn.send({"kind": "row", "row": row})
            if row["fwd_ms"]["median"] > config.max_ms:
                break
    except Exception as exc:  # reported to the parent as a row status, never a crash of the run
        status = "oom" if _is_oom(exc) else "error"
        conn.send({"kind": "error", "status": status, "error": "".join(traceback.format_exception_only(exc))})
    finally:
        conn.send({"kind": "done"})
        conn.close()


def worker_context() -> mp.context.BaseContext:
    """The process context of benchmark workers: a clean fork server on Linux, spawn elsewhere."""
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["attnzoo.bench.preload"])
        return ctx
    return mp.get_context("spawn")


def _bench_one(
    name: str, label: str, card_kwargs: dict[str, Any], config: BenchConfig, ctx: mp.context.BaseContext
) -> dict[str, Any]:
    card = attnzoo.card(name)
    kwargs = at_equal_width(name, card_kwargs, label) if config.equal_width else card_kwargs
    sizes = sizes_for(card, config)
    result: dict[str, Any] = {
        "name": f"{name}[{label}]" if label else name,
        "mechanism": name,
        "family": card.family,
        "parity": card.parity,
        "spatial_dims": card.spatial_dims,
        "config": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))},
        "card_config": {k: v for k, v in card_kwargs.items() if isinstance(v, (int, float, str, bool))},
        "params": None,
        "worker_pid": None,
        "sizes": [],
    }
    parent, child = ctx.Pipe(duplex=False)
    cls = mechanism_class(name)
    proc = ctx.Process(target=_worker, args=(name, cls, card, kwargs, sizes, config, child), daemon=True)
    proc.start()
    child.close()
    deadline = time.monotonic() + config.timeout_s
    failure: dict[str, Any] | None = None
    done = False
    while not done:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            failure = {"status": "timeout", "error": f"worker exceeded {config.timeout_s:.0f} s"}
            break
        try:
            ready = parent.poll(min(remaining, 1.0))
        except (EOFError, OSError):
            ready = False
        if not ready:
            if not proc.is_alive() and not parent.poll():
                code = proc.exitcode
                status = "oom" if code in (-9, 137) else "error"
                failure = {"status": status, "error": f"worker died with exit code {code}"}
                break
            continue
        try:
            msg = parent.recv()
        except EOFError:
            failure = {"status": "error", "error": "worker closed its pipe early"}
            break
        if msg["kind"] == "params":
            result["params"] = msg["params"]
            result["worker_pid"] = msg["pid"]
        elif msg["kind"] == "row":
            result["sizes"].append(msg["row"])
        elif msg["kind"] == "error":
            failure = {"status": msg["status"], "error": msg["error"].strip()}
        elif msg["kind"] == "done":
            done = True
    if proc.is_alive():
        proc.kill()
    proc.join(timeout=10)
    parent.close()
    measured = len(result["sizes"])
    for size in sizes[measured:]:
        n = 1
        for s in size:
            n *= s
        status = failure["status"] if failure else "skipped"
        row: dict[str, Any] = {"size": list(size), "n": n, "batch": config.batch, "status": status}
        if failure:
            row["error"] = failure["error"]
            failure = {"status": "skipped", "error": "an earlier size failed"}
        result["sizes"].append(row)
    return result


def run_benchmarks(
    names: list[str], config: BenchConfig, *, progress: bool = True, backend: Backend | None = None
) -> dict[str, Any]:
    """Benchmark ``names`` with ``config``; returns the JSON-ready result document. With a
    ``backend``, each family of ``names`` is one job on it (see the module docstring); results keep
    the order of ``names`` either way."""
    if backend is not None:
        return _run_families(names, config, progress, backend)
    jobs = [(name, label, kwargs) for name in names for label, kwargs in bench_variants(name).items()]
    ctx = worker_context()
    results = []
    bar = tqdm(jobs, desc="bench", unit="config", disable=not progress, file=sys.stderr)
    for name, label, kwargs in bar:
        bar.set_postfix_str(f"{name}[{label}]" if label else name)
        results.append(_bench_one(name, label, kwargs, config, ctx))
    return {"meta": {**machine_metadata(config.threads), "config": asdict(config)}, "results": results}


def _bench_family(names: list[str], config: BenchConfig) -> dict[str, Any]:
    """One family's benchmark in a backend's worker, with the name of the machine that ran it."""
    doc = run_benchmarks(names, config, progress=False)
    doc["meta"]["host"] = platform.node()
    return doc


def _run_families(names: list[str], config: BenchConfig, progress: bool, backend: Backend) -> dict[str, Any]:
    from attnzoo.tasks.jobs import JobFailedError  # not at import: bench workers import this module

    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(attnzoo.card(name).family, []).append(name)
    groups = list(families.values())
    docs: dict[int, dict[str, Any]] = {}
    with tqdm(total=len(groups), desc="bench", unit="family", disable=not progress, file=sys.stderr) as bar:

        def landed(index: int, doc: dict[str, Any]) -> None:
            docs[index] = doc
            bar.update(1)

        try:
            backend.run(_bench_family, [(g, config) for g in groups], cpus=config.threads, on_result=landed)
        except JobFailedError as exc:
            named = list(families)
            failed = "; ".join(f"{named[i]} ({', '.join(groups[i])}): {e}" for i, e in exc.errors.items())
            raise JobFailedError(f"{len(exc.errors)} family job(s) failed: {failed}", exc.errors) from exc
    order = {name: i for i, name in enumerate(names)}
    measured = [r for i in sorted(docs) for r in docs[i]["results"]]
    results = sorted(measured, key=lambda r: order[r["mechanism"]])  # stable: variants keep their order
    machines = [
        {"family": family, "mechanisms": group, **{k: v for k, v in docs[i]["meta"].items() if k != "config"}}
        for i, (family, group) in enumerate(families.items())
    ]
    meta = {**machine_metadata(config.threads), "config": asdict(config)}
    return {"meta": {**meta, "backend": {"name": backend.name, "groups": machines}}, "results": results}
