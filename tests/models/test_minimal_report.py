"""``python -m attnzoo.models.minimal_report``: where it writes, what it states, that the learning rate
is chosen on the validation split (never the test split) and that bad arguments are named."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attnzoo.models.minimal import parameter_table
from attnzoo.models.minimal_report import bench_parameters, main, split
from attnzoo.tasks.catalog import get_task

ARGS = [
    "--preset", "tiny", "--variants", "standard,minimal", "--seeds", "0,1", "--lrs", "1e-3,1e-2",
    "--steps", "digits=4,listops=3", "--no-progress",
]  # fmt: skip


def test_report_selects_on_validation_and_states_its_command(tmp_path: Path) -> None:
    assert main([*ARGS, "--runs", str(tmp_path)]) == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    doc = json.loads((folder / "results.json").read_text())
    report = (folder / "README.md").read_text()
    assert doc["command"] in report and "--preset tiny" in doc["command"]
    assert {r["split"] for r in doc["selection"]} == {"val"} and {r["split"] for r in doc["test"]} == {"test"}
    assert {r["seed"] for r in doc["selection"]} == {0}
    for task, info in doc["tasks"].items():
        data = get_task(task).generate("tiny", seed=0)
        assert (info["train_used"], info["val"]) == (data.size("train"), data.size("val"))
        assert info["budget"]["steps"] == {"digits": 4, "listops": 3}[task]
    tasks, variants = ("digits", "listops"), ("standard", "minimal")
    configs = {(t, v, m) for t in tasks for v in variants for m in (True, False)}
    assert {(c["task"], c["variant"], c["mlp"]) for c in doc["chosen_lr"]} == configs
    for chosen in doc["chosen_lr"]:
        key = (chosen["task"], chosen["variant"], chosen["mlp"])
        trials = [r for r in doc["selection"] if (r["task"], r["variant"], r["mlp"]) == key]
        assert sorted(r["lr"] for r in trials) == [1e-3, 1e-2]
        assert chosen["lr"] == max(trials, key=lambda r: (r["final_accuracy"], -r["lr"]))["lr"]
        tests = [r for r in doc["test"] if (r["task"], r["variant"], r["mlp"]) == key]
        assert sorted(r["seed"] for r in tests) == [0, 1] and {r["lr"] for r in tests} == {chosen["lr"]}
        first = next(r for r in tests if r["seed"] == 0)
        picked = next(r for r in trials if r["lr"] == chosen["lr"])
        assert first["history"][-1]["loss"] == picked["history"][-1]["loss"]  # the same model, retrained
        assert first["params"] == picked["params"]
    no_mlp = {r["params"] for r in doc["test"] if not r["mlp"] and r["task"] == "digits"}
    with_mlp = {r["params"] for r in doc["test"] if r["mlp"] and r["task"] == "digits"}
    assert max(no_mlp) < min(with_mlp)
    assert "identical in 8 of 8 configurations" in report
    assert "**validation**" in report and "| digits | minimal, no MLP |" in report


def test_split_measures_the_task_s_validation_or_test_split() -> None:
    data = get_task("digits").generate("tiny")
    on_val, on_test = split(data, "val"), split(data, "test")
    assert torch.equal(on_val.train["images"], data.train["images"])
    assert torch.equal(on_test.train["images"], data.train["images"])
    assert torch.equal(on_val.test["images"], data.val["images"])
    assert torch.equal(on_test.test["images"], data.test["images"])
    with pytest.raises(ValueError, match="evaluate_on"):
        split(data, "train")
    with pytest.raises(ValueError, match="no validation split"):
        split(replace(data, val=None), "val")


def test_bench_parameters_match_the_parameter_table() -> None:
    rows = {r["variant"]: r for r in bench_parameters()}
    table = {r["variant"]: r for r in parameter_table(256, 4)}
    assert rows["standard"]["block_mlp"] == table["standard"]["block"]
    for variant in ("merged", "shared", "no-vo", "minimal"):
        assert rows[variant]["block_no_mlp"] == table[variant]["block"]
        assert rows[variant]["saving_block_no_mlp"] == pytest.approx(table[variant]["saving"])
    assert rows["minimal"]["attention"] == 256 * 256 and rows["standard"]["saving_attention"] == 0.0
    assert rows["merged"]["saving_attention"] < 0 < rows["merged-1head"]["saving_attention"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--variants", "standard,tiny-attention"], "variants"),
        (["--tasks", "mqar"], "tasks"),
        (["--seeds", "0,0"], "seeds"),
        (["--seeds", "a"], "seeds"),
        (["--lrs", "-1"], "lrs"),
        (["--steps", "digits=0"], "steps"),
        (["--steps", "cifar=3"], "steps"),
        (["--jobs", "0"], "jobs"),
        (["--preset", "huge"], "preset"),
    ],
)
def test_bad_arguments_are_named_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    assert main([*ARGS, *extra, "--runs", str(tmp_path)]) == 2
    assert named in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
