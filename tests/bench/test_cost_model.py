"""attnzoo bench's cost-model and per-variant parameter sections: fusemax_attention, measured at tiny
sizes, gets its cascade cost model printed beside the measured cost (modelled FLOPs equal to the
counted ones), and minimal_attention's variants get their parameter savings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import attnzoo
from attnzoo.bench.runner import PRESETS, run_benchmarks
from attnzoo.cli import main
from attnzoo.kernels.fusemax import bench_cost_model

TINY = dataclasses.replace(
    PRESETS["quick"], seq_sizes=(16, 64), repeats=2, budget_s=0.05, warmup=1, timeout_s=120.0
)


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    path = out / "bench.json"
    path.write_text(
        json.dumps(run_benchmarks(["fusemax_attention", "minimal_attention"], TINY, progress=False))
    )
    return path


def _section(report: str, title: str) -> str:
    start = report.index(f"## {title}")
    end = report.find("\n## ", start + 1)
    return report[start : end if end >= 0 else None]


def test_bench_prints_the_cost_model(doc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--from", str(doc), "--out", str(tmp_path)]) == 0
    assert "fusemax_attention[1-pass]" in capsys.readouterr().out
    section = _section((tmp_path / "report.md").read_text(), "Cost models")
    results = {r["name"]: r for r in json.loads(doc.read_text())["results"]}
    for label, passes in (("1-pass", 1), ("2-pass", 2), ("3-pass", 3)):
        res = results[f"fusemax_attention[{label}]"]
        assert f"`fusemax_attention[{label}]`" in section
        for row in res["sizes"]:
            assert row["status"] == "ok"
            model = bench_cost_model(res["config"], row["n"], row["batch"])
            assert model["passes"] == passes
            assert model["model FLOPs"] == row["flops_fwd"]  # the model's FLOPs are the counted ones
            line = next(x for x in section.splitlines() if x.startswith(f"| {row['n']} | {passes} |"))
            assert line.split("|")[-4].strip() == "1"  # model / counted FLOPs
    assert "minimal_attention" not in section  # no cost model on its card


def test_bench_prints_parameter_savings_per_variant(doc: Path, tmp_path: Path) -> None:
    assert main(["bench", "--from", str(doc), "--out", str(tmp_path)]) == 0
    section = _section((tmp_path / "report.md").read_text(), "Parameters by variant")
    config = attnzoo.card("minimal_attention").bench
    base = sum(
        p.numel()
        for p in attnzoo.create(
            "minimal_attention", dim=config["dim"], num_heads=config["num_heads"]
        ).parameters()
    )
    for label, overrides in config["variants"].items():
        kwargs = {"dim": config["dim"], "num_heads": config["num_heads"], **overrides}
        params = sum(p.numel() for p in attnzoo.create("minimal_attention", **kwargs).parameters())
        assert f"| `minimal_attention[{label}]` | {params:,} | {1 - params / base:+.1%} |" in section
    assert "fusemax_attention" not in section  # its variants all have the same parameters
