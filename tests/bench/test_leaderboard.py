"""The leaderboard on a tiny sweep (no timing assertions): equal width, interleaved latency beside
memory and FLOPs, committed quality or a stated absence, FLOPs never 0, plots that read, a new run
folder unless ``--out``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import attnzoo
from attnzoo import registry
from attnzoo.bench.interleave import run_interleaved
from attnzoo.bench.leaderboard import (
    LEADERBOARD_PRESETS,
    PRODUCED,
    flops_cell,
    load_quality,
    measure_costs,
    quality_cell,
    reference_row,
)
from attnzoo.bench.leaderboard_report import pareto_points, print_summary, write_leaderboard
from attnzoo.bench.measure import BENCH_RESERVED_KEYS, EQUAL_WIDTHS, cost_model
from attnzoo.cli import main
from attnzoo.registry import Card, register

REPO = Path(__file__).resolve().parents[2]
MQAR = REPO / "reports" / "eval" / "mqar" / "results.json"
NAMES = ["mhsa", "linear_attention", "sliding_window", "hard_attention_gate", "se"]
TINY = dataclasses.replace(
    LEADERBOARD_PRESETS["quick"],
    seq_sizes=(16, 64),
    grid_sizes=((4, 4), (8, 8)),
    repeats=5,
    budget_s=0.05,
    timeout_s=120.0,
)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return measure_costs(NAMES, TINY, progress=False, gemm_n=64)


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    """The committed MQAR result, and a task whose only run failed."""
    root = tmp_path / "eval"
    (root / "mqar").mkdir(parents=True)
    shutil.copyfile(MQAR, root / "mqar" / "results.json")
    failed = json.loads(MQAR.read_text())
    failed["task"] = {**failed["task"], "name": "digits", "preset": "tiny", "seed_note": "synthetic"}
    run = {**failed["runs"][0], "mechanism": "se", "family": "feature_map", "status": "error"}
    failed["runs"] = [{**run, "error": "RuntimeError: deliberate"}]
    failed.pop("summary")
    failed.pop("latency")
    (root / "digits").mkdir()
    (root / "digits" / "results.json").write_text(json.dumps(failed))
    return root


def test_costs_are_at_equal_width_and_timed_interleaved(doc: dict[str, Any]) -> None:
    results = {r["name"]: r for r in doc["results"]}
    assert list(results) == NAMES
    for res in results.values():
        width = EQUAL_WIDTHS[res["family"]]
        assert res["config"].get("dim", res["config"].get("channels")) == width
        assert res["card_config"] == {
            k: v
            for k, v in attnzoo.card(res["mechanism"]).bench.items()
            if k not in BENCH_RESERVED_KEYS and isinstance(v, (int, float, str, bool))
        }
        for row in res["sizes"]:
            assert row["status"] == "ok" and row["interleaved"]["runs"] == TINY.repeats
            assert row["interleaved"]["min"] <= row["interleaved"]["median"]
    assert set(doc["interleaved"]) == {"token_mixer", "feature_map"}
    for family in doc["interleaved"].values():
        assert family["status"] == "ok" and [r["round"] for r in family["rounds"]] == [0, 1]
        assert all(r["gemm"]["n"] == 64 and len(r["load_before"]) == 3 for r in family["rounds"])
    assert reference_row(results["mhsa"])["n"] == 64


def test_uncounted_flops_are_never_zero(doc: dict[str, Any]) -> None:
    results = {r["name"]: r for r in doc["results"]}
    gate = results["hard_attention_gate"]
    ref = reference_row(gate)
    assert ref["flops_fwd"] is None  # elementwise only: the counter sees nothing
    c = gate["config"]["channels"]  # its card's formula: sigmoid of C logits + B C N products
    modelled = cost_model("hard_attention_gate")(gate["config"], ref["n"], ref["batch"])["model FLOPs"]
    assert modelled == 4 * c + ref["batch"] * c * ref["n"] > 0
    assert flops_cell(gate, ref).endswith("(card formula)")
    uncounted = {"mechanism": "se", "config": {"channels": 64}}  # a card without a formula
    assert flops_cell(uncounted, {**ref, "flops_fwd": None}) == "not counted (elementwise; no card formula)"
    fusemax = {
        "mechanism": "fusemax_attention",
        "config": {"dim": 64, "num_heads": 4, "tile": 16, "passes": 1},
    }
    row = {"status": "ok", "n": 64, "batch": 1, "flops_fwd": None}
    assert flops_cell(fusemax, row).endswith("(card formula)")
    assert flops_cell(results["mhsa"], reference_row(results["mhsa"])) not in ("0", "–")


def test_quality_is_read_as_committed_or_its_absence_stated(
    doc: dict[str, Any], eval_dir: Path, tmp_path: Path
) -> None:
    quality = load_quality(eval_dir)
    assert [q["task"] for q in quality] == ["digits", "mqar"]
    mqar = quality[1]
    committed = json.loads(MQAR.read_text())["summary"]
    results = {r["name"]: r for r in doc["results"]}
    mhsa = next(r for r in committed if r["mechanism"] == "mhsa")
    assert quality_cell(mqar, results["mhsa"]).startswith(f"{mhsa['best_accuracy']:.3f} ± ")
    assert quality_cell(mqar, results["sliding_window"]) == "not evaluated (no committed result)"
    assert mqar["selection"] == "validation" and mqar["metric"].endswith("chosen on validation")
    older = json.loads(MQAR.read_text())  # as written before validation splits: no record of them
    older["task"].pop("selection")
    older["runs"] = [{k: v for k, v in r.items() if not k.startswith("val")} for r in older["runs"]]
    (tmp_path / "old" / "mqar").mkdir(parents=True)
    (tmp_path / "old" / "mqar" / "results.json").write_text(json.dumps(older))
    (old_mqar,) = load_quality(tmp_path / "old")
    assert old_mqar["selection"] == "test" and "older protocol" in old_mqar["metric"]
    vig = {"name": "vig", "mechanism": "vig"}  # a 2-D mixer: MQAR's causal LM cannot host it
    assert quality_cell(mqar, vig).startswith("cannot run: mechanism 'vig' works on 2-D inputs")
    assert quality_cell(quality[0], results["se"]) == "failed: RuntimeError: deliberate"
    points = pareto_points(mqar, [r for r in doc["results"] if r["family"] == "token_mixer"])
    assert sorted(p.label for p in points) == ["linear_attention (N=64)", "mhsa (N=64)"]
    assert any(p.front for p in points)


def test_leaderboard_states_command_quality_cost_and_clean_plots(
    doc: dict[str, Any], eval_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "board"
    written = write_leaderboard(doc, load_quality(eval_dir), out, "attnzoo report --full --out board")
    names = {p.name for p in written}
    assert {"leaderboard.md", "leaderboard.json", "leaderboard_pareto_token_mixer.png"} <= names
    assert names <= set(PRODUCED)
    text = (out / "leaderboard.md").read_text()
    assert "Generated by `attnzoo report --full --out board`" in text
    assert "| `sliding_window` | not evaluated (no committed result) |" in text
    assert "(card formula)" in text  # hard_attention_gate's elementwise FLOPs, never 0
    assert "| `se` | failed: RuntimeError: deliberate |" in text
    assert "No attnzoo task evaluates" not in text
    check = text.split("## Plot label check", 1)[1]
    assert check.count(": none") == sum(n.endswith(".png") for n in names)
    saved = json.loads((out / "leaderboard.json").read_text())
    assert saved["command"] == "attnzoo report --full --out board" and saved["results"] == doc["results"]


def test_quick_summary_prints_committed_beside_fresh(
    doc: dict[str, Any], eval_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = json.loads(json.dumps({**doc, "command": "attnzoo report --full --out reports"}))
    print_summary(doc, load_quality(eval_dir), baseline, Path("reports/leaderboard.json"))
    out = capsys.readouterr().out
    assert (
        "committed leaderboard: reports/leaderboard.md" in out
        and "`attnzoo report --full --out reports`" in out
    )
    mhsa = next(line for line in out.splitlines() if line.strip().startswith("mhsa "))
    assert mhsa.split()[-1] == "1.00"


def test_report_writes_a_new_run_folder_unless_out(
    doc: dict[str, Any], eval_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "measured.json"
    source.write_text(json.dumps({**doc, "command": "attnzoo report --full"}))
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "reports" / "leaderboard.md"
    committed.parent.mkdir()
    committed.write_text("committed")
    args = ["report", "--full", "--from", str(source), "--eval-dir", str(eval_dir), "--no-progress"]
    assert main(args) == 0
    assert committed.read_text() == "committed"
    (run,) = (tmp_path / "reports" / "runs").iterdir()
    text = (run / "leaderboard.md").read_text()
    assert "Generated by `attnzoo report --full`" in text and "re-rendered from its JSON by" in text
    out = tmp_path / "board"
    out.mkdir()
    (out / "leaderboard_pareto_gate.png").write_text("stale")
    (out / "notes.txt").write_text("kept")
    assert main([*args, "--out", str(out)]) == 0
    assert not (out / "leaderboard_pareto_gate.png").exists() and (out / "notes.txt").read_text() == "kept"


def test_report_refuses_a_backend_and_a_foreign_json(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="nothing to distribute"):
        main(["report", "--full", "--backend", "ray", "--only", "mhsa", "--out", str(tmp_path)])
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps({"results": []}))
    with pytest.raises(SystemExit, match=r"not a leaderboard\.json"):
        main(["report", "--from", str(bad), "--out", str(tmp_path)])


class _FailsAbove16(attnzoo.TokenMixer):
    """A token mixer that raises on more than 16 tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.lin = torch.nn.Linear(dim, dim)

    def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        if size[0] > 16:
            raise RuntimeError("deliberate failure")
        return self.lin(x)


@pytest.fixture
def fails_above_16() -> Iterator[str]:
    name = "test_leaderboard_fails_above_16"
    card = Card(
        name=name,
        family="token_mixer",
        paper="test",
        summary="test",
        time_complexity="O(N)",
        memory_complexity="O(N)",
        ledger=("test",),
        tiny={"dim": 4},
        bench={"dim": 4},
    )
    register(card)(_FailsAbove16)
    yield name
    registry._CARDS.pop(name)
    registry._CLASSES.pop(name)
    registry._ALIASES.pop(name)


def test_interleaved_names_a_failing_contender_and_times_the_others(fails_above_16: str) -> None:
    contenders = [
        ("mhsa", "mhsa", {"dim": 8, "num_heads": 2}, [[16], [64]]),
        (fails_above_16, fails_above_16, {"dim": 8}, [[16], [64]]),
        ("linear_attention", "linear_attention", {"dim": 8, "num_heads": 2}, [[16], None]),
    ]
    out = run_interleaved(contenders, TINY, gemm_n=32, timeout_s=120)
    assert out["status"] == "ok" and [r["round"] for r in out["rounds"]] == [0, 1]
    first, second = out["rounds"]
    assert set(first["timings"]) == {"mhsa", fails_above_16, "linear_attention"} and not first["errors"]
    assert set(second["timings"]) == {"mhsa"}
    assert "deliberate failure" in second["errors"][fails_above_16]
    assert all(t["runs"] == TINY.repeats for t in first["timings"].values())
