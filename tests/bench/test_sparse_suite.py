"""The sparse-kernel suite on its tiny preset: patterns, contenders' agreement, skips, report structure.

No timing is asserted; Flex runs uncompiled and NATTEN only where named (both are slow to set up)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from attnzoo.bench import sparse_suite
from attnzoo.bench.plots import overlapping_texts
from attnzoo.bench.sparse_cases import (
    PRESETS,
    Case,
    Skip,
    attnzoo_call,
    dense_mask,
    make_inputs,
    mask_mod,
    natten_call,
    pairs,
)
from attnzoo.bench.sparse_report import (
    OUTPUTS,
    headline,
    sparse_figures,
    sparse_markdown,
    write_sparse_outputs,
)
from attnzoo.bench.sparse_suite import SPARSE_PRESETS, run_sparse_suite
from attnzoo.kernels.grouped import segment_mask
from attnzoo.kernels.neighborhood import neighborhood_mask
from attnzoo.kernels.windowed import band_mask, group_mask

TINY = SPARSE_PRESETS["tiny"]
CASES = PRESETS["tiny"]


def _own_mask(case: Case, inputs: dict) -> torch.Tensor:
    """The pattern as attnzoo's kernels define it (their own dense-mask helpers)."""
    kw, n = case.kw, case.n
    if case.kernel.startswith("na"):
        return neighborhood_mask(case.size, kw["kernel_size"], kw["dilation"], kw["causal"])
    if case.kernel == "sliding_window":
        return band_mask(n, n, kw["left"], kw["right"])
    if case.kernel == "s2_groups":
        return group_mask(
            n, kw["group_size"], offset=kw["offset"], num_sink=kw["num_sink"], causal=kw["causal"]
        )
    if case.kernel == "region":
        return segment_mask(inputs["segments"].view(1, n))[0, 0]
    t = inputs["tokens_per_region"]
    return inputs["allowed"].repeat_interleave(t, 0).repeat_interleave(t, 1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kernel}-{c.label}")
def test_mask_mod_is_the_kernels_pattern_and_pairs_count_it(case: Case) -> None:
    inputs = make_inputs(case, heads=2, dim=4)
    mask = dense_mask(mask_mod(case, inputs), case.n)
    assert torch.equal(mask, _own_mask(case, inputs))
    assert pairs(case, inputs) == int(mask.sum())


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kernel}-{c.label}")
def test_attnzoo_kernel_equals_masked_sdpa_and_eager_flex(case: Case) -> None:
    inputs = make_inputs(case, heads=2, dim=8)
    call = attnzoo_call(case, inputs)
    ours = call.to_flat(call.fn(*call.tensors))
    state = {"config": TINY, "gemm_flops": 1e12, "dense_rate": {}, "block_masks": {}, "eager_flex": True}
    for name in ("sdpa", "flex"):
        other = sparse_suite._contender_call(name, case, inputs, state)
        torch.testing.assert_close(other.to_flat(other.fn(*other.tensors)), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kernel}-{c.label}")
def test_natten_contender_equals_attnzoo_where_it_applies(case: Case) -> None:
    pytest.importorskip("natten")
    inputs = make_inputs(case, heads=2, dim=8)
    try:
        call = natten_call(case, inputs)
    except Skip as skip:
        assert skip.status == "n/a" and case.kernel not in ("na1d", "na2d", "na3d")
        assert not (case.kernel == "sliding_window" and case.kw["right"] == 0)
        return
    ours = attnzoo_call(case, inputs)
    torch.testing.assert_close(
        call.to_flat(call.fn(*call.tensors)), ours.to_flat(ours.fn(*ours.tensors)), atol=1e-5, rtol=1e-5
    )


@pytest.fixture(scope="module")
def tiny_doc() -> dict:
    return run_sparse_suite(TINY)


def test_tiny_suite_has_a_row_per_case_with_every_contender_measured(tiny_doc: dict) -> None:
    rows = tiny_doc["cases"]
    assert [(r["kernel"], r["label"]) for r in rows] == [(c.kernel, c.label) for c in CASES]
    for row in rows:
        assert row["useful_flops_fwdbwd"] == pytest.approx(3.5 * row["useful_flops_fwd"])
        assert row["gemm"]["gflops"] > 0
        for name in TINY.contenders:
            for p in ("fwd", "fwdbwd"):
                entry = row["contenders"][name][p]
                assert entry["status"] == "ok", (row["label"], name, p, entry)
                assert entry["runs"] == TINY.repeats and entry["min_ms"] <= entry["median_ms"]
                assert entry["pct_peak"] > 0 and entry["peak_mib"] >= 0
        assert row["contenders"]["sdpa"]["fwd"]["max_abs_diff_vs_attnzoo"] < 1e-5
        path = row["contenders"]["attnzoo"]["fwd"]["path"]
        if row["kernel"] in ("na1d", "na2d", "na3d"):  # tiny shapes: below the Flex dispatch thresholds
            assert "attnzoo tiled kernel" in path and "compiled FlexAttention" not in path, path
    meta = tiny_doc["meta"]
    assert len(meta["load_average_before"]) == 3 and len(meta["load_average_after"]) == 3


def test_report_files_state_the_command_and_keep_other_files(tiny_doc: dict, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("kept")
    written = write_sparse_outputs(tiny_doc, tmp_path, "attnzoo bench --suite sparse --out x")
    assert sorted(p.name for p in written) == sorted(OUTPUTS)
    assert (tmp_path / "notes.txt").read_text() == "kept"
    text = (tmp_path / "sparse.md").read_text()
    assert "`attnzoo bench --suite sparse --out x`" in text and "Load average" in text
    for case in CASES:
        assert sum(line.startswith(f"| {case.label} |") for line in text.splitlines()) == 1
    doc = json.loads((tmp_path / "sparse.json").read_text())
    assert doc["command"].endswith("--out x") and doc["headline"]["compared_with_flex"] == 0


def test_plots_read_without_overlapping_texts(tiny_doc: dict) -> None:
    figures = sparse_figures(tiny_doc)
    assert set(figures) == {"peak_fwd.png", "peak_fwdbwd.png"}
    for name, fig in figures.items():
        assert overlapping_texts(fig) == [], name
        assert all(ax.get_xscale() == "log" for ax in fig.axes if ax.lines)


def test_skips_are_recorded_with_reasons() -> None:
    series = (Case("na1d", (40,), CASES[0].params), Case("na1d", (48,), CASES[0].params))
    doc = run_sparse_suite(dataclasses.replace(TINY, cases=series, call_cap_s=0.0, backward=False))
    first, second = (r["contenders"] for r in doc["cases"])
    assert first["attnzoo"]["fwd"]["reason"].startswith("one call took")
    assert second["attnzoo"]["fwd"]["reason"] == "over the 0 s cap at N=40"
    assert first["sdpa"]["fwd"]["reason"].startswith("dense cost predicts")
    doc = run_sparse_suite(dataclasses.replace(TINY, cases=series[:1], memory_cap_mib=0.0, backward=False))
    assert doc["cases"][0]["contenders"]["sdpa"]["fwd"]["reason"].startswith("its dense N x N mask")
    doc = run_sparse_suite(dataclasses.replace(TINY, cases=series, budget_s=0.0))
    assert all(r["skipped"] == "suite time budget used up" for r in doc["cases"])
    assert "skipped: suite time budget used up" in sparse_markdown(doc, "cmd")
    assert headline(doc)["attnzoo_faster"] == 0


def test_bad_contenders_are_refused() -> None:
    with pytest.raises(ValueError, match="contenders"):
        run_sparse_suite(dataclasses.replace(TINY, contenders=("attnzoo", "triton")))


def test_cli_runs_the_selected_contenders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnzoo.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setitem(SPARSE_PRESETS, "quick", dataclasses.replace(TINY, cases=CASES[:2], backward=False))
    out = tmp_path / "sparse"
    assert (
        main(["bench", "--suite", "sparse", "--contenders", "attnzoo", "--out", str(out), "--no-progress"])
        == 0
    )
    doc = json.loads((out / "sparse.json").read_text())
    assert doc["config"]["contenders"] == ["attnzoo"] and len(doc["cases"]) == 2
    assert doc["command"] == f"attnzoo bench --suite sparse --quick --contenders attnzoo --out {out}"
    with pytest.raises(SystemExit, match="choose from"):
        main(["bench", "--suite", "sparse", "--contenders", "attnzoo,triton", "--out", str(out)])
    with pytest.raises(SystemExit, match="belongs to --suite sparse"):
        main(["bench", "--suite", "linear", "--contenders", "attnzoo", "--out", str(out)])
