"""The linear-attention suite: its reference algorithms against attnzoo's kernels (float64) and the
structure of its interleaved result and report (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attnzoo.bench.linear_suite import (
    based_cumsum_reference,
    naive_gla_loop_reference,
    quadratic_decay_reference,
    run_linear_suite,
    suite_markdown,
    write_linear_outputs,
)
from attnzoo.kernels.linear import linear_attention_recurrent
from attnzoo.mechanisms.token_mixer.based import BasedAttention


def _tiny() -> dict:
    return run_linear_suite(
        heads=2,
        dim=8,
        naive_n=64,
        reference_n=64,
        scaling_ns=(64, 128),
        based={"dim": 8, "num_heads": 2, "feature_dim": 3},
        repeats=2,
        gemm_n=32,
    )


def test_linear_suite_structure_and_report(tmp_path: Path) -> None:
    res = _tiny()
    assert [r["gate"] for r in res["naive_vs_chunked"]] == ["none", "per_head", "per_key"]
    for r in res["naive_vs_chunked"]:
        assert r["speedup"] == r["naive_ms"] / r["chunked_ms"] and r["naive_ms"] <= r["naive_median_ms"]
    refs = res["references"]
    assert [r["reference"].split()[0] for r in refs] == ["Lightning", "ViG", "Zoology"]
    assert all(r["n"] == 64 and r["speedup"] == r["reference_ms"] / r["attnzoo_ms"] for r in refs)
    assert refs[2]["reference_mib"] >= 0 and refs[2]["attnzoo_mib"] >= 0
    assert all(len(r["chunked_ms"]) == 2 for r in res["scaling"])
    assert res["repeats"] == 2 and len(res["gemm"]["gflops"]) == 3 and min(res["gemm"]["gflops"]) > 0
    assert len(res["load_average_before"]) == 3 and len(res["load_average_after"]) == 3
    text = suite_markdown(res)
    assert "Lightning Attention" in text and "naive_recurrent_gla" in text and "train_view" in text
    assert "GFLOP/s" in text and "interleaved" in text and "Command" not in text
    (tmp_path / "stale.txt").write_text("kept")
    written = write_linear_outputs(res, tmp_path, "attnzoo bench --suite linear --out x")
    assert sorted(p.name for p in written) == ["linear.json", "linear.md"]
    assert (tmp_path / "stale.txt").exists()
    assert "Command: `attnzoo bench --suite linear --out x`." in (tmp_path / "linear.md").read_text()
    assert json.loads((tmp_path / "linear.json").read_text())["command"].endswith("--out x")


def test_naive_gla_loop_reference_matches_recurrence() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    log_gate = torch.nn.functional.logsigmoid(torch.randn(2, 2, 9, 4, generator=g, dtype=torch.float64))
    want, _ = linear_attention_recurrent(q, k, v, log_gate=log_gate, scale=0.5)
    torch.testing.assert_close(naive_gla_loop_reference(q, k, v, log_gate), want)


def test_based_cumsum_reference_matches_module() -> None:
    torch.manual_seed(0)
    module = BasedAttention(12, num_heads=2, feature_dim=3).double()
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    torch.testing.assert_close(based_cumsum_reference(module, x), module(x))


def test_quadratic_decay_reference_matches_recurrence() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    slopes = torch.tensor([0.5, 0.1], dtype=torch.float64)
    want, _ = linear_attention_recurrent(q, k, v, log_gate=(-slopes)[None, :, None, None].expand(1, 2, 9, 1))
    torch.testing.assert_close(quadratic_decay_reference(q, k, v, slopes), want)


def test_cli_linear_suite_writes_a_new_run_folder(tmp_path: Path, monkeypatch) -> None:
    import attnzoo.bench.linear_suite as linear_suite
    from attnzoo.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(linear_suite, "run_linear_suite", lambda **_: _tiny())
    assert main(["bench", "--suite", "linear"]) == 0
    (run,) = (tmp_path / "reports" / "linear" / "runs").iterdir()
    assert "Command: `attnzoo bench --suite linear --quick`." in (run / "linear.md").read_text()
