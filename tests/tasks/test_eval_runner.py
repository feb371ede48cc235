"""The training runner, the report and the ``eval`` sub-command, end to end on tiny budgets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import attnzoo
from attnzoo.tasks import TASKS, bench_latency, markdown_table, pareto_front, run_eval, write_results
from attnzoo.tasks.cli import add_eval_parser, parse_mechanism_kwargs
from attnzoo.tasks.report import selected_runs, selection_split, summarise
from attnzoo.tasks.selection import sweep_table

_MECHANISM = {"sequence": "mhsa", "image": "mhsa", "mil": "attention_mil"}


def _need(name: str) -> None:
    if name not in attnzoo.list_mechanisms():
        pytest.skip(f"{name} is not registered yet")


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_runs_end_to_end(task: str) -> None:
    mechanism = _MECHANISM[TASKS[task].kind]
    _need(mechanism)
    doc = run_eval(task, [mechanism], preset="tiny", steps=3, progress=False)
    (run,) = doc["runs"]
    assert run["status"] == "ok", run.get("error")
    assert run["steps_run"] == 3 and 0.0 <= run["final_accuracy"] <= 1.0
    assert doc["task"]["budget"]["steps"] == 3 and doc["task"]["seeds"] == [0]
    assert doc["task"]["selection"] == "validation" and doc["task"]["data"]["num_val"] > 0
    (last,) = run["history"]  # eval_every > 3: one evaluation, at the end
    assert {"val_loss", "val_accuracy", "test_accuracy"} <= last.keys() and "accuracy" not in last
    assert run["selected_step"] == 3 and run["val_accuracy"] == last["val_accuracy"]
    assert run["test_accuracy"] == last["test_accuracy"] == run["final_accuracy"]


def test_digits_with_feature_map_attention_uses_the_cnn() -> None:
    doc = run_eval("digits", ["se"], preset="tiny", steps=2, progress=False, model={"cnn_widths": [4, 8]})
    assert doc["runs"][0]["status"] == "ok" and doc["runs"][0]["backbone"] == "SmallCNN"


def test_softmax_attention_solves_tiny_mqar() -> None:
    """Robust quality claim: mhsa reaches the 0.99 target on the tiny MQAR preset with seed 0
    within its 200-step budget (it does so at step ~150), and stops there."""
    doc = run_eval("mqar", ["mhsa"], preset="tiny", progress=False)
    run = doc["runs"][0]
    assert run["target_reached_at"] is not None, run["history"]
    assert run["val_accuracy"] >= 0.99 and run["steps_run"] == run["target_reached_at"] <= 200
    assert run["selected_step"] == run["steps_run"] and run["test_accuracy"] >= 0.97


def test_runs_repeat_exactly_and_errors_do_not_abort() -> None:
    a = run_eval("induction_heads", ["mhsa"], preset="tiny", steps=4, progress=False)
    b = run_eval("induction_heads", ["mhsa"], preset="tiny", steps=4, progress=False)
    assert a["runs"][0]["history"][-1]["loss"] == b["runs"][0]["history"][-1]["loss"]
    doc = run_eval(
        "induction_heads",
        ["mhsa", "se"],
        preset="tiny",
        steps=2,
        progress=False,
        overrides={"mhsa": {"num_heads": 5}},
    )
    (error,) = [r["error"] for r in doc["runs"]]  # se is refused before training, not an error
    assert "cannot build mechanism 'mhsa' at width 32" in error
    assert "is a feature_map" in doc["task"]["refused"]["se"]
    with pytest.raises(ValueError, match="unknown task"):
        run_eval("nope", ["mhsa"])
    with pytest.raises(ValueError, match=r"unknown backbone setting\(s\) \['short_conv'\]"):
        run_eval("digits", ["mhsa"], preset="tiny", model={"short_conv": 3})


def _scores(acc: float, old: bool) -> dict:
    """The accuracy fields of a successful run: ``acc`` on validation and test (older documents:
    the best test accuracy), with a two-evaluation history."""
    if old:
        return {
            "best_accuracy": acc,
            "final_accuracy": acc,
            "history": [
                {"step": 10, "loss": 1.0, "accuracy": acc / 2, "seconds": 0.5},
                {"step": 20, "loss": 0.5, "accuracy": acc, "seconds": 1.0},
            ],
        }
    return {
        "val_accuracy": acc,
        "val_loss": 1 - acc,
        "test_accuracy": acc,
        "selected_step": 20,
        "final_val_accuracy": acc,
        "final_accuracy": acc,
        "history": [
            {"step": 10, "loss": 1.0, "val_loss": 1.0, "val_accuracy": acc / 2, "test_accuracy": acc / 2,
             "seconds": 0.5},
            {"step": 20, "loss": 0.5, "val_loss": 1 - acc, "val_accuracy": acc, "test_accuracy": acc,
             "seconds": 1.0},
        ],
    }  # fmt: skip


def _doc(old: bool = False) -> dict:
    """A results document (``old``: one written before the validation splits)."""
    runs = [
        {
            "mechanism": n,
            "family": "token_mixer",
            "seed": 0,
            "status": "ok",
            "backbone": "CausalLM",
            "params": 10,
            "target_reached_at": hit,
            "train_seconds": 1.0,
            "steps_run": 20,
            "budget": {"lr": 0.003},
            **_scores(acc, old),
        }
        for n, acc, hit in (("mhsa", 1.0, 20), ("linear_attention", 0.4, None), ("based", 0.9, None))
    ]
    runs.append(
        {"mechanism": "gla", "family": "token_mixer", "seed": 0, "status": "error", "error": "boom",
         "budget": {"lr": 0.003}}
    )  # fmt: skip
    task = {
        "name": "mqar",
        "kind": "sequence",
        "summary": "s",
        "preset": "cpu",
        "data": {},
        "model": {},
        "budget": {"target": 0.99},
        "seq_len": 64,
        "chance": 0.01,
        "seeds": [0],
    }
    if not old:
        task.update(selection="validation", mechanisms=["mhsa", "linear_attention", "based", "gla", "vig"],
                    refused={"vig": "mechanism 'vig' works on 2-D inputs"})  # fmt: skip
    return {"meta": {"torch": "x", "threads": 1, "date": "today"}, "task": task, "runs": runs}


def _bench() -> dict:
    def sizes(ms: float) -> list:
        return [
            {"size": [n], "n": n, "fwd_ms": {"median": ms * n / 256}, "status": "ok"} for n in (256, 1024)
        ]

    return {
        "meta": {},
        "results": [
            {"name": "mhsa", "family": "token_mixer", "sizes": sizes(4.0)},
            {"name": "linear_attention", "family": "token_mixer", "sizes": sizes(1.0)},
            {
                "name": "based",
                "family": "token_mixer",
                "sizes": [*sizes(2.0)[:1], {"size": [1024], "n": 1024, "status": "timeout"}],
            },
        ],
    }


def test_report_table_pareto_and_files(tmp_path: Path) -> None:
    bench = _bench()
    assert bench_latency(bench, "mhsa", 64) == (4.0, 256)
    assert bench_latency(bench, "mhsa", 900) == (16.0, 1024)
    assert bench_latency(bench, "based", 2000) == (2.0, 256)  # timeouts are skipped
    assert bench_latency(bench, "gla", 64) is None
    assert pareto_front([("a", 1.0, 0.5), ("b", 2.0, 0.9), ("c", 3.0, 0.8), ("d", 1.0, 0.4)]) == ["a", "b"]
    table = markdown_table(_doc(), bench)
    head = "| params | test acc | val acc | final test acc | reached 0.99 on val (runs, median step) |"
    assert head in table
    mhsa = "| `mhsa` | token_mixer | CausalLM | 10 | 1.000 | 1.000 | 1.000 | 1/1, 20 | 1.0 | 4.000 @ 256 |"
    assert mhsa in table
    assert "| `gla` | token_mixer | – | – | error |" in table
    paths = write_results(_doc(), tmp_path, bench)
    assert {p.name for p in paths} == {"results.json", "report.md", "accuracy.png", "pareto.png"}
    report = (tmp_path / "report.md").read_text()
    assert "Pareto front (latency vs accuracy): mhsa, linear_attention, based" in report and "boom" in report
    assert "**Learning rates and checkpoints chosen on the validation split**" in report
    assert "- selection split: validation" in report and "older protocol" not in report
    refused = "## Mechanisms that cannot run this task\n\n- `vig` (asked for): mechanism 'vig' works on 2-D"
    assert refused in report
    assert "| `mhsa` | 0 | **1.000 / 1.000 @ 20** |" in report and "| `gla` | 0 | failed |" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"][0]["fwd_ms"] == 4.0 and saved["summary"][0]["selection"] == "validation"
    assert saved["summary"][0]["test_accuracy"] == saved["summary"][0]["best_accuracy"] == 1.0
    assert {p.name for p in write_results(_doc(), tmp_path / "nobench")} == {
        "results.json",
        "report.md",
        "accuracy.png",
    }


def test_an_older_document_renders_and_says_it_chose_on_test(tmp_path: Path) -> None:
    old = _doc(old=True)
    assert selection_split(old) == "test" and selection_split(_doc()) == "validation"
    table = markdown_table(old)
    assert "| best test acc | final test acc | reached 0.99 on test (runs, median step) |" in table
    assert "| `mhsa` | token_mixer | CausalLM | 10 | 1.000 | 1.000 | 1/1, 20 | 1.0 |" in table
    write_results(old, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "**Learning rates chosen on the test split (older protocol)**" in report
    assert "- selection split: test" in report and "| `based` | 0 | **0.900 (20 steps)** |" in report
    assert "cannot run this task (from today's registry: this document predates the list)" in report
    assert "- `vig`: mechanism 'vig' works on 2-D inputs; this backbone feeds 1-D inputs" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"]["selection"] == "test" and selection_split(saved) == "test"
    with pytest.raises(ValueError, match=r"task\.selection must be one of"):
        selection_split({"task": {"selection": "train"}, "runs": []})


def test_trained_backbone_latency_feeds_the_table_and_pareto_plot(tmp_path: Path) -> None:
    doc = run_eval(
        "mqar", ["mhsa", "based", "se"], preset="tiny", steps=2, progress=False, latency=True
    )
    lat = doc["latency"]
    assert (lat["batch_size"], lat["seq_len"]) == (32, doc["task"]["seq_len"])
    assert set(lat["fwd_ms"]) == {"mhsa", "based"}  # se cannot run the task: nothing to time
    assert all(t["median"] > 0 and t["runs"] >= 1 for t in lat["fwd_ms"].values())
    rows = {r["mechanism"]: r for r in summarise(doc)}
    assert rows["mhsa"]["fwd_ms"] == lat["fwd_ms"]["mhsa"]["median"] and "se" not in rows
    table = markdown_table(doc)
    assert "fwd ms (model, batch 32)" in table
    assert f"| {lat['fwd_ms']['based']['median']:.2f} |" in table
    names = {p.name for p in write_results(doc, tmp_path)}
    assert "pareto.png" in names
    report = (tmp_path / "report.md").read_text()
    assert "(its configuration, fresh weights) on one batch of 32 test examples of length" in report
    assert "--latency" in report and "Pareto front (latency vs accuracy): " in report
    assert "fwd ms (bench, N)" in markdown_table(doc, _bench())  # a bench.json takes precedence
    image = run_eval("digits", ["se"], preset="tiny", steps=2, progress=False, latency=True)
    assert set(image["latency"]["fwd_ms"]) == {"se"} and image["latency"]["seq_len"] is None
    write_results(image, tmp_path / "digits")
    assert "one batch of 32 test examples, " in (tmp_path / "digits" / "report.md").read_text()


def _sweep_run(
    seed: int, lr: float, val: float, test: float, val_loss: float = 0.5, hit: int | None = None,
    status: str = "ok",
) -> dict:
    """A run of the ``based`` sweep with validation accuracy ``val`` and test accuracy ``test`` at
    its chosen step (``status="error"``: a failed run)."""
    run = {"mechanism": "based", "family": "token_mixer", "seed": seed, "status": status}
    run["budget"] = {"lr": lr}
    if status != "ok":
        return {**run, "error": f"diverged at {lr}"}
    return {
        **run,
        "backbone": "CausalLM",
        "params": 10,
        "val_accuracy": val,
        "val_loss": val_loss,
        "test_accuracy": test,
        "selected_step": 20,
        "final_val_accuracy": val,
        "final_accuracy": test,
        "target_reached_at": hit,
        "train_seconds": lr * 1000,
        "steps_run": 20,
        "history": [
            {"step": 20, "loss": 0.5, "val_loss": val_loss, "val_accuracy": val, "test_accuracy": test,
             "seconds": 1.0}
        ],
    }  # fmt: skip


def _sweep_doc(runs: list[dict]) -> dict:
    doc = _doc()
    doc["task"].update(
        seeds=[0, 1, 2], lrs=[0.001, 0.003, 0.01], budget={"steps": 20, "lr": 0.003, "target": 0.99},
        mechanisms=["based"], refused={},
    )  # fmt: skip
    doc["runs"] = runs
    return doc


def test_learning_rates_are_chosen_on_validation_and_ties_break_by_loss_then_lower_rate(
    tmp_path: Path,
) -> None:
    doc = _sweep_doc(
        [
            _sweep_run(0, 0.001, 0.50, 0.99),  # best on test, not chosen
            _sweep_run(0, 0.003, 0.90, 0.80, hit=None),  # best on validation: chosen
            _sweep_run(0, 0.01, 0.85, 0.95),
            _sweep_run(1, 0.001, 1.00, 0.97, val_loss=0.20, hit=900),
            _sweep_run(1, 0.003, 1.00, 0.99, val_loss=0.10, hit=400),  # tie on accuracy, lower loss
            _sweep_run(1, 0.01, 0.0, 0.0, status="error"),
            _sweep_run(2, 0.001, 0.60, 0.61),  # exact tie: the lower rate
            _sweep_run(2, 0.003, 0.60, 0.70),
            _sweep_run(2, 0.01, 0.60, 0.70),
        ]
    )
    chosen = [(r["seed"], r["budget"]["lr"]) for r in selected_runs(doc)]
    assert chosen == [(0, 0.003), (1, 0.003), (2, 0.001)]
    (row,) = summarise(doc)
    assert row["selection"] == "validation" and row["ok"] == 3 and row["failed_runs"] == 1
    assert row["test_accuracy"] == pytest.approx((0.80 + 0.99 + 0.61) / 3)
    assert row["val_accuracy"] == pytest.approx((0.90 + 1.00 + 0.60) / 3)
    assert row["worst_test_accuracy"] == pytest.approx(0.61) and row["lrs"] == [0.003, 0.003, 0.001]
    assert row["reached"] == 1 and row["steps_to_target"] == 400
    table = markdown_table(doc)
    assert "| worst seed | val acc | final test acc | lr (per seed, chosen on validation) |" in table
    assert "| `based` | token_mixer | CausalLM | 10 | 0.800 ± 0.155 | 0.610 | 0.833 | 0.800 |" in table
    write_results(doc, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "| seed | lr 0.001: val / test acc @ step | lr 0.003: val / test acc @ step |" in report
    assert "| `based` | 0 | 0.500 / 0.990 @ 20 | **0.900 / 0.800 @ 20** | 0.850 / 0.950 @ 20 |" in report
    assert "| `based` | 1 | 1.000 / 0.970 @ 20 | **1.000 / 0.990 @ 20** | failed |" in report
    assert "| `based` | 2 | **0.600 / 0.610 @ 20** | 0.600 / 0.700 @ 20 | 0.600 / 0.700 @ 20 |" in report
    assert "1 run(s) of the sweep failed" in report and "--lrs 0.001,0.003,0.01" in report
    doc["runs"] = [r for r in doc["runs"] if r["status"] != "ok"]  # a seed that failed at every rate
    (row,) = summarise(doc)
    assert row["ok"] == 0 and row["errors"] == ["diverged at 0.01"]


def test_an_older_sweep_keeps_each_seeds_best_test_run() -> None:
    def old(seed: int, lr: float, acc: float, hit: int | None) -> dict:
        run = _sweep_run(seed, lr, acc, acc, hit=hit)
        for key in ("val_accuracy", "val_loss", "test_accuracy", "selected_step", "final_val_accuracy"):
            run.pop(key)
        return {**run, "best_accuracy": acc, "history": [{"step": 20, "loss": 0.5, "accuracy": acc}]}

    doc = _sweep_doc([old(0, 0.001, 0.5, None), old(0, 0.003, 1.0, 900), old(0, 0.01, 1.0, 400)])
    del doc["task"]["selection"]
    assert selection_split(doc) == "test"
    (chosen,) = selected_runs(doc)  # same best test accuracy: the earlier target
    assert chosen["budget"]["lr"] == 0.01
    assert "| `based` | 0 | 0.500 (20 steps) | 1.000 (20 steps) | **1.000 (20 steps)** |" in sweep_table(doc)


def test_run_eval_sweeps_learning_rates() -> None:
    doc = run_eval("mqar", ["mhsa"], preset="tiny", steps=2, seeds=[0, 1], lrs=[1e-3, 1e-2], progress=False)
    assert doc["task"]["lrs"] == [1e-3, 1e-2]
    assert [(r["seed"], r["budget"]["lr"]) for r in doc["runs"]] == [
        (0, 1e-3),
        (0, 1e-2),
        (1, 1e-3),
        (1, 1e-2),
    ]
    assert run_eval("mqar", ["mhsa"], preset="tiny", steps=1, lr=1e-3, progress=False)["task"]["lrs"] == []
    with pytest.raises(ValueError, match="not both"):
        run_eval("mqar", ["mhsa"], preset="tiny", lr=1e-3, lrs=[1e-3])
    with pytest.raises(ValueError, match="positive finite"):
        run_eval("mqar", ["mhsa"], preset="tiny", lrs=[1e-3, -1.0])
    with pytest.raises(ValueError, match="must not repeat"):
        run_eval("mqar", ["mhsa"], preset="tiny", lrs=[1e-3, 1e-3])


def test_parallel_jobs_give_the_sequential_results(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # so that 2 jobs get 1 thread each
    kwargs = {"preset": "tiny", "steps": 3, "seeds": [0, 1], "lrs": [3e-3, 1e-2], "progress": False}
    parallel = run_eval("mqar", ["mhsa"], jobs=2, **kwargs)
    assert parallel["meta"]["jobs"] == 2 and parallel["meta"]["threads"] == 1
    monkeypatch.undo()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = run_eval("mqar", ["mhsa"], **kwargs)
    finally:
        torch.set_num_threads(threads)
    strip = ("train_seconds", "seconds")
    for a, b in zip(parallel["runs"], sequential["runs"], strict=True):
        assert (a["seed"], a["budget"]["lr"]) == (b["seed"], b["budget"]["lr"])
        assert [{k: v for k, v in h.items() if k not in strip} for h in a["history"]] == [
            {k: v for k, v in h.items() if k not in strip} for h in b["history"]
        ]
    assert parallel["task"] == sequential["task"]
    with pytest.raises(ValueError, match="jobs must be a positive int"):
        run_eval("mqar", ["mhsa"], preset="tiny", jobs=0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnzoo")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    args = parser.parse_args(["eval", "--list"])
    assert args.func(args) == 0
    assert "mqar" in capsys.readouterr().out
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_bench()))
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "eval",
            "selective_copying",
            "--preset",
            "tiny",
            "--mechanisms",
            "mhsa",
            "--steps",
            "2",
            "--seeds",
            "0,1",
            "--bench",
            str(bench),
            "--out",
            str(out),
            "--no-progress",
            "--mechanism-kwargs",
            'mhsa:{"num_heads": 4}',
            "--model-kwargs",
            '{"short_conv": 2}',
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| `mhsa` |" in printed and "± " in printed
    assert (out / "pareto.png").exists() and (out / "report.md").exists()
    doc = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in doc["runs"]] == [0, 1] and doc["runs"][0]["overrides"] == {"num_heads": 4}
    repeat = (
        "attnzoo eval selective_copying --preset tiny --mechanisms mhsa --seeds 0,1 --steps 2 --lr 0.003 "
        """--target 0.99 --model-kwargs '{"short_conv": 2}' --mechanism-kwargs 'mhsa:{"num_heads": 4}'"""
    )
    assert repeat in (out / "report.md").read_text()
    again = tmp_path / "again"
    args = parser.parse_args(["eval", "--from", str(out / "results.json"), "--out", str(again)])
    assert args.func(args) == 0
    assert "| `mhsa` |" in capsys.readouterr().out and not (again / "pareto.png").exists()
    redone = json.loads((again / "results.json").read_text())
    assert redone["runs"] == doc["runs"]
    assert [r["best_accuracy"] for r in redone["summary"]] == [r["best_accuracy"] for r in doc["summary"]]
    (tmp_path / "bad.json").write_text("[1]")
    args = parser.parse_args(["eval", "--from", str(tmp_path / "bad.json")])
    assert args.func(args) == 2
    assert "not a results.json" in capsys.readouterr().out
    args = parser.parse_args(["eval", "mqar", "--preset", "huge", "--no-progress"])
    assert args.func(args) == 2
    assert "no preset 'huge'" in capsys.readouterr().out
    args = parser.parse_args(["eval", "mqar", "--lrs", "0.001,fast", "--no-progress"])
    assert args.func(args) == 2
    assert "could not convert string to float: 'fast'" in capsys.readouterr().out
    args = parser.parse_args(["eval", "mqar", "--lr", "0.001", "--lrs", "0.001,0.01", "--no-progress"])
    assert args.func(args) == 2
    assert "not both" in capsys.readouterr().out
    args = parser.parse_args(["eval", "mqar", "--mechanisms", "mhsaa", "--no-progress"])
    assert args.func(args) == 2
    assert "closest: mhsa" in capsys.readouterr().out


def test_parse_mechanism_kwargs_errors() -> None:
    assert parse_mechanism_kwargs(['softmax:{"num_heads": 2}']) == {"mhsa": {"num_heads": 2}}
    for bad in ("mhsa", "mhsa:{", "mhsa:[1]"):
        with pytest.raises(ValueError, match="--mechanism-kwargs"):
            parse_mechanism_kwargs([bad])
