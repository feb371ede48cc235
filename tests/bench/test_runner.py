"""The benchmark harness on real and deliberately failing mechanisms (no timing assertions)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import attnzoo
from attnzoo import registry
from attnzoo.bench.measure import EQUAL_HEADS, EQUAL_WIDTHS, at_equal_width, bench_variants
from attnzoo.bench.report import (
    compare_runs,
    crossover_n,
    scaling_exponent,
    summarise,
    write_plots,
    write_report,
)
from attnzoo.bench.runner import PRESETS, run_benchmarks
from attnzoo.registry import Card, register

TINY = dataclasses.replace(
    PRESETS["quick"],
    seq_sizes=(16, 64),
    grid_sizes=((4, 4), (8, 8)),
    repeats=2,
    budget_s=0.05,
    timeout_s=120.0,
)


class _Misbehaving(attnzoo.TokenMixer):
    """A token mixer that sleeps, raises, or runs out of memory on its second size."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.dim = dim
        self.mode = mode
        self.lin = torch.nn.Linear(dim, dim)

    def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        if size[0] > 16:
            if self.mode == "sleep":
                time.sleep(60)
            elif self.mode == "raise":
                raise RuntimeError("deliberate failure")
            elif self.mode == "oom":
                raise MemoryError("deliberate")
        return self.lin(x)


@pytest.fixture
def misbehaving() -> Iterator[list[str]]:
    names = []
    for mode in ("sleep", "raise", "oom"):
        name = f"test_bench_{mode}"
        register(
            Card(
                name=name,
                family="token_mixer",
                paper="test",
                summary="test",
                time_complexity="O(N)",
                memory_complexity="O(N)",
                ledger=("test",),
                tiny={"dim": 4, "mode": mode},
                bench={"dim": 4, "mode": mode},
            )
        )(_Misbehaving)
        names.append(name)
    yield names
    for name in names:
        registry._CARDS.pop(name)
        registry._CLASSES.pop(name)
        registry._ALIASES.pop(name)


def test_result_structure_and_isolation(tmp_path: Path) -> None:
    doc = run_benchmarks(["mhsa", "eca"], TINY, progress=False)
    assert {"cpu", "threads", "torch", "date", "config"} <= set(doc["meta"])
    by_name = {r["name"]: r for r in doc["results"]}
    mhsa, eca = by_name["mhsa"], by_name["eca"]
    assert mhsa["params"] == sum(
        p.numel() for p in attnzoo.create("mhsa", **attnzoo.card("mhsa").bench).parameters()
    )
    assert [s["n"] for s in mhsa["sizes"]] == [16, 64]
    assert [s["size"] for s in eca["sizes"]] == [[4, 4], [8, 8]]
    for res in (mhsa, eca):
        for row in res["sizes"]:
            assert row["status"] == "ok"
            assert row["fwd_ms"]["median"] > 0 and row["peak_fwd_mb"] >= 0
            assert row["flops_fwd"] > 0
    c = attnzoo.card("mhsa").bench["dim"]
    for row in mhsa["sizes"]:  # projections 8 N C^2 plus attention 4 N^2 C: SDPA FLOPs are counted
        assert row["flops_fwd"] == 8 * row["n"] * c * c + 4 * row["n"] ** 2 * c
    pids = {mhsa["worker_pid"], eca["worker_pid"]}
    assert len(pids) == 2 and os.getpid() not in pids, "each mechanism runs in its own process"
    json.dumps(doc)
    plots = write_plots(doc, tmp_path)
    report = write_report(doc, tmp_path, plots).read_text()
    assert "`mhsa`" in report and "`eca`" in report
    assert all((tmp_path / p).stat().st_size > 0 for p in plots)


def test_variants_are_benchmarked_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    card = dataclasses.replace(
        attnzoo.card("mhsa"),
        bench={"dim": 16, "num_heads": 2, "variants": {"h2": {}, "h4": {"num_heads": 4}}},
    )
    monkeypatch.setitem(registry._CARDS, "mhsa", card)
    cfg = dataclasses.replace(TINY, seq_sizes=(16,))
    doc = run_benchmarks(["mhsa"], cfg, progress=False)
    assert [r["name"] for r in doc["results"]] == ["mhsa[h2]", "mhsa[h4]"]
    assert [r["config"]["num_heads"] for r in doc["results"]] == [2, 4]
    assert all(r["mechanism"] == "mhsa" for r in doc["results"])


def test_elementwise_only_work_is_not_counted_rather_than_zero(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, grid_sizes=((4, 4),))
    doc = run_benchmarks(["hard_attention_gate", "se"], cfg, progress=False)
    gate, se = doc["results"]
    assert gate["sizes"][0]["status"] == "ok" and gate["sizes"][0]["flops_fwd"] is None
    assert se["sizes"][0]["flops_fwd"] > 0
    report = write_report(doc, tmp_path, []).read_text().split("## Configurations")[0]
    (line,) = [row for row in report.splitlines() if row.startswith("| `hard_attention_gate` |")]
    assert line.split("|")[4].strip() == "not counted"


def test_equal_width_compares_a_family_at_one_width(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, seq_sizes=(16,), equal_width=True)
    doc = run_benchmarks(["mhsa", "linear_attention"], cfg, progress=False)
    for res in doc["results"]:
        assert res["config"]["dim"] == EQUAL_WIDTHS["token_mixer"]
        assert res["config"]["num_heads"] == EQUAL_HEADS
        assert res["card_config"] == {
            k: v for k, v in attnzoo.card(res["name"]).bench.items() if isinstance(v, (int, float, str, bool))
        }
    assert doc["results"][0]["params"] == doc["results"][1]["params"]  # same projections at one width
    report = write_report(doc, tmp_path, []).read_text()
    assert "Equal width: every mechanism of a family" in report
    assert "| `mhsa` |" in report.split("## Configurations")[1]


@pytest.mark.parametrize("name", attnzoo.list_mechanisms())
def test_every_mechanism_builds_at_equal_width(name: str) -> None:
    variants = attnzoo.card(name).bench.get("variants", {})
    for label, kwargs in bench_variants(name).items():
        wide = at_equal_width(name, kwargs, label)
        attnzoo.create(name, **wide)
        width = EQUAL_WIDTHS[attnzoo.card(name).family]
        assert width in {wide.get("dim"), wide.get("channels")}, wide
        if label:  # a variant keeps what defines it (e.g. minimal_attention[merged-1head]: one head)
            assert {k: wide[k] for k in variants[label]} == variants[label], label


def test_backward_is_measured() -> None:
    cfg = dataclasses.replace(TINY, seq_sizes=(16,), backward=True)
    (res,) = run_benchmarks(["mhsa"], cfg, progress=False)["results"]
    row = res["sizes"][0]
    assert row["flops_fwdbwd"] > row["flops_fwd"]
    assert row["fwdbwd_ms"]["median"] > 0


def test_timeout_error_and_oom_are_recorded_not_raised(misbehaving: list[str]) -> None:
    cfg = dataclasses.replace(TINY, timeout_s=8.0)
    doc = run_benchmarks(misbehaving, cfg, progress=False)
    status = {r["name"]: [s["status"] for s in r["sizes"]] for r in doc["results"]}
    assert status["test_bench_sleep"] == ["ok", "timeout"]
    assert status["test_bench_raise"] == ["ok", "error"]
    assert status["test_bench_oom"] == ["ok", "oom"]
    raised = next(r for r in doc["results"] if r["name"] == "test_bench_raise")
    assert "deliberate failure" in raised["sizes"][1]["error"]


def _fake(name: str, ns: list[int], ms: list[float], family: str = "token_mixer") -> dict:
    return {
        "name": name,
        "family": family,
        "parity": "equations",
        "spatial_dims": 1,
        "params": 1,
        "sizes": [
            {"size": [n], "n": n, "status": "ok", "fwd_ms": {"median": t}, "peak_fwd_mb": 1.0, "flops_fwd": 1}
            for n, t in zip(ns, ms)
        ],
    }


def test_scaling_exponent_and_crossover() -> None:
    quad = _fake("mhsa", [100, 200, 400], [1.0, 4.0, 16.0])
    lin = _fake("lin", [100, 200, 400], [8.0, 16.0, 32.0])
    assert scaling_exponent(quad) == pytest.approx(2.0)
    assert scaling_exponent(lin) == pytest.approx(1.0)
    assert crossover_n(lin, quad) is None  # lin/quad = 800/n > 1 over the measured range
    lin2 = _fake("lin2", [100, 200, 400], [2.0, 4.0, 8.0])  # equal to quad at n = 200
    assert crossover_n(lin2, quad) == pytest.approx(200.0)
    rows = summarise({"results": [quad, lin2]})
    assert rows[1]["crossover"] == pytest.approx(200.0) and rows[0]["crossover"] is None


def test_compare_runs_flags_regressions() -> None:
    old = {"results": [_fake("a", [10], [1.0]), _fake("b", [10], [1.0])]}
    new = {"results": [_fake("a", [10], [2.0]), _fake("b", [10], [0.5])]}
    lines, regressions = compare_runs(new, old)
    assert regressions == 1
    assert any("REGRESSION" in line and "`a`" in line for line in lines)
    assert any("faster" in line and "`b`" in line for line in lines)
