"""The validation protocol (issue 15): every task has a validation split disjoint from train and
test, runs choose their checkpoint and each (mechanism, seed) its learning rate on it, and the
report lists the mechanisms that cannot run a task with the reason."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from attnzoo.tasks import TASKS, get_task, run_eval, train_one
from attnzoo.tasks.backbones import host_refusal, task_refusals
from attnzoo.tasks.cli import add_eval_parser
from attnzoo.tasks.digits import digits_holdout, digits_split
from attnzoo.tasks.jobs import JOURNAL, JournalMismatchError
from attnzoo.tasks.make import TEST_SEED_OFFSET, VAL_SEED_OFFSET, check_seed
from attnzoo.tasks.recall import multiquery_ar
from attnzoo.tasks.runner import _checkpoint

_GENERATED = [name for name, spec in TASKS.items() if spec.kind == "sequence"]


def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r.tolist()) for r in x.flatten(1)}


@pytest.mark.parametrize("task", _GENERATED)
def test_generated_tasks_draw_validation_from_its_own_seed(task: str) -> None:
    spec = get_task(task)
    data = spec.generate("tiny", seed=3)
    preset = spec.preset("tiny")
    assert data.size("val") == (preset.num_val or preset.num_test) == data.config["num_val"]
    key = next(iter(data.val))
    assert data.val[key].shape[1:] == data.test[key].shape[1:]
    assert not torch.equal(data.val[key][:50], data.test[key][:50])
    assert not torch.equal(data.val[key][:50], data.train[key][:50])
    again = spec.generate("tiny", seed=3)
    assert all(torch.equal(data.val[k], again.val[k]) for k in data.val)
    assert not torch.equal(spec.generate("tiny", seed=4).val[key], data.val[key])


def test_mqar_validation_is_the_generator_at_the_validation_seed() -> None:
    data = get_task("mqar").generate("tiny", seed=2)
    tokens, targets = multiquery_ar(200, **get_task("mqar").preset("tiny").data, seed=2 + VAL_SEED_OFFSET)
    assert torch.equal(data.val["tokens"], tokens) and torch.equal(data.val["targets"], targets)
    assert VAL_SEED_OFFSET != TEST_SEED_OFFSET
    for bad in (-1, TEST_SEED_OFFSET, True, 1.0):
        with pytest.raises(ValueError, match="seed must be an int in"):
            check_seed(bad)
    with pytest.raises(ValueError, match="seed must be an int in"):
        run_eval("mqar", ["mhsa"], preset="tiny", seeds=[0, TEST_SEED_OFFSET], progress=False)


def test_digits_hold_out_a_fixed_part_of_the_training_split_and_keep_the_test_split() -> None:
    x_train, x_test, _, y_test = digits_split()
    fit, val, _, _ = digits_holdout()
    assert fit.shape[0] + val.shape[0] == x_train.shape[0] and val.shape[0] == round(0.2 * x_train.shape[0])
    assert not _rows(fit) & _rows(val) and _rows(fit) | _rows(val) == _rows(x_train)
    a, b = (get_task("digits").generate("cpu", seed=s) for s in (0, 7))
    assert torch.equal(a.val["images"], b.val["images"]) and torch.equal(a.train["images"], b.train["images"])
    assert torch.equal(a.test["images"], x_test) and torch.equal(a.test["labels"], y_test)  # unchanged
    assert torch.equal(a.val["images"], val) and a.config["num_val"] == val.shape[0]
    assert a.config["num_train"] == fit.shape[0] == get_task("digits").preset("cpu").num_train
    tiny = get_task("digits").generate("tiny")
    assert tiny.size("val") == 128 and torch.equal(tiny.val["images"], val[:128])


def test_mil_validation_bags_hold_only_held_out_images() -> None:
    data = get_task("mil_digits").generate("tiny", seed=1)
    fit, val, _, _ = digits_holdout()
    held_out = data.val["bags"][data.val["mask"]]
    assert data.size("val") == 32 and _rows(held_out) <= _rows(val)
    assert _rows(data.train["bags"][data.train["mask"]]) <= _rows(fit)
    assert not _rows(held_out) & _rows(fit)


def test_validation_numbers_repeat_for_a_seed_and_journal_lines_carry_them(tmp_path: Path) -> None:
    kwargs = {"preset": "tiny", "steps": 4, "seeds": [1], "lrs": [3e-3, 1e-2], "progress": False}
    a = run_eval("associative_recall", ["mhsa"], journal=tmp_path / JOURNAL, **kwargs)
    b = run_eval("associative_recall", ["mhsa"], **kwargs)
    keys = ("val_accuracy", "val_loss", "test_accuracy", "selected_step", "final_val_accuracy")
    for x, y in zip(a["runs"], b["runs"], strict=True):
        assert [x[k] for k in keys] == [y[k] for k in keys]
        assert [(h["val_loss"], h["val_accuracy"]) for h in x["history"]] == [
            (h["val_loss"], h["val_accuracy"]) for h in y["history"]
        ]
    header, *lines = (json.loads(line) for line in (tmp_path / JOURNAL).read_text().splitlines())
    assert header["config"]["selection"] == "validation"
    assert [line["val_accuracy"] for line in lines] == [r["val_accuracy"] for r in a["runs"]]
    older = {k: v for k, v in header["config"].items() if k != "selection"}  # a journal of the old code
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / JOURNAL).write_text(json.dumps({"config": older}) + "\n")
    with pytest.raises(JournalMismatchError, match=r"differs in \['selection'\]"):
        run_eval("associative_recall", ["mhsa"], journal=tmp_path / "old" / JOURNAL, **kwargs)


def test_the_checkpoint_is_chosen_on_validation_never_on_test() -> None:
    history = [
        {"step": 10, "val_accuracy": 0.5, "val_loss": 1.0, "test_accuracy": 0.9},
        {"step": 20, "val_accuracy": 0.8, "val_loss": 0.7, "test_accuracy": 0.6},
        {"step": 30, "val_accuracy": 0.8, "val_loss": 0.6, "test_accuracy": 0.5},  # tie: lower loss
        {"step": 40, "val_accuracy": 0.8, "val_loss": 0.6, "test_accuracy": 0.4},  # full tie: earlier
        {"step": 50, "val_accuracy": 0.7, "val_loss": float("nan"), "test_accuracy": 1.0},
    ]
    assert _checkpoint(history)["step"] == 30
    data = get_task("mqar").generate("tiny")
    data.val = None
    with pytest.raises(ValueError, match=r"data\.val"):
        train_one(data, get_task("mqar").preset("tiny"), "mhsa", progress=False)


def test_mechanisms_that_cannot_run_a_task_are_listed_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "works on 2-D inputs" in host_refusal("sequence", "vig")
    assert "no causal variant" in host_refusal("sequence", "gaam")
    assert "causal only" in host_refusal("image", "gla") and host_refusal("image", "vig") is None
    assert "is a pooling" in host_refusal("image", "attention_mil") and host_refusal("image", "se") is None
    assert host_refusal("mil", "attention_mil") is None and "is a token_mixer" in host_refusal("mil", "mhsa")
    refused = task_refusals("sequence", ("token_mixer",), ["se"])
    assert "vig" in refused and "mhsa" not in refused and list(refused)[-1] == "se"
    doc = run_eval("listops", ["vig", "se"], preset="tiny", steps=2, progress=False)
    assert doc["runs"] == [] and {"vig", "se"} <= doc["task"]["refused"].keys()
    assert doc["task"]["mechanisms"] == ["vig", "se"]
    parser = argparse.ArgumentParser(prog="attnzoo")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "out"
    args = parser.parse_args(["eval", "mil_digits", "--preset", "tiny", "--mechanisms", "attention_mil,mhsa",
                              "--steps", "2", "--no-progress", "--out", str(out)])  # fmt: skip
    assert args.func(args) == 0
    assert "mhsa: not run: mechanism 'mhsa' is a token_mixer" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "- `mhsa` (asked for): mechanism 'mhsa' is a token_mixer" in report
    assert "--mechanisms attention_mil,mhsa" in report
