"""The checking rules behind attnzoo.official.load: Signature kinds, nested configs, defaults; the
load-level errors (symbol, non-mapping input); optional official keys (BatchNorm counters, SyncBN
extras)."""

from __future__ import annotations

import types

import pytest
import torch
from tests.official.layouts import cbam_constructor, cbam_state_dict

from attnzoo import official
from attnzoo.official import CheckpointError, Choice, Signature
from attnzoo.parity import fixture_cases, fixture_names

SIG = Signature(
    dim=int,
    ratio=(float, 4.0),
    bias=(bool, True),
    mode=(Choice("a", "b"), "a"),
    scale=(float | None, None),
    sizes=(list, [1, 2]),
    cfg=(Signature(open=True, DEPTH=int, INNER=(Signature(K=(int, 3)), {})), {"DEPTH": 2}),
    unsupported=("act_layer",),
)


def test_defaults_are_filled_and_ints_become_floats() -> None:
    kw, problems = SIG.check({"dim": 8, "ratio": 2}, "Thing")
    assert not problems
    assert kw == {
        "dim": 8,
        "ratio": 2.0,
        "bias": True,
        "mode": "a",
        "scale": None,
        "sizes": [1, 2],
        "cfg": {"DEPTH": 2, "INNER": {"K": 3}},
    }
    assert isinstance(kw["ratio"], float)
    assert SIG.required() == ["dim"]


def test_every_problem_is_listed_with_its_name() -> None:
    bad = {
        "ratio": True,
        "bias": 1,
        "mode": "c",
        "scale": "x",
        "sizes": 3,
        "dims": 8,
        "act_layer": None,
        "cfg": {"DEPTH": 2.5, "EXTRA": 1, "INNER": {"KK": 1}},
    }
    _, problems = SIG.check(bad, "Thing")
    kinds = {p.key: p.kind for p in problems}
    assert kinds == {
        "dims": "unknown_argument",
        "act_layer": "unsupported_argument",
        "dim": "missing_argument",
        "ratio": "argument",
        "bias": "argument",
        "mode": "argument",
        "scale": "argument",
        "sizes": "argument",
        "cfg.DEPTH": "argument",
        "cfg.INNER.KK": "unknown_argument",
    }
    text = "\n".join(p.message for p in problems)
    assert "did you mean 'dim'" in text and "did you mean 'cfg.INNER.K'" in text
    assert "(the values attnzoo implements)" in text and "not supported by attnzoo" in text


def test_nested_config_may_be_an_attribute_namespace() -> None:
    kw, problems = SIG.check({"dim": 4, "cfg": types.SimpleNamespace(DEPTH=3)}, "Thing")
    assert not problems and kw["cfg"] == {"DEPTH": 3, "INNER": {"K": 3}}
    _, problems = SIG.check({"dim": 4, "cfg": 7}, "Thing")
    assert [(p.key, p.kind) for p in problems] == [("cfg", "argument")]


def test_load_level_errors() -> None:
    ctor, sd = cbam_constructor(16, 4), cbam_state_dict(16, 4)
    with pytest.raises(KeyError, match="available"):
        official.load("no_such_format", ctor, sd)
    with pytest.raises(CheckpointError, match="symbol 'Nope'") as info:
        official.load("cbam", ctor, sd, symbol="Nope")
    assert info.value.keys == ["symbol"]
    with pytest.raises(CheckpointError, match="state_dict must be a mapping"):
        official.load("cbam", ctor, list(sd.values()))
    with pytest.raises(CheckpointError, match="constructor must be a mapping"):
        official.load("cbam", [16, 4], sd)
    with pytest.raises(TypeError, match="strict"):
        official.load("cbam", ctor, sd, strict="no")
    assert issubclass(CheckpointError, ValueError)
    assert official.symbols("cbam") == ["CBAM"] and official.signature("cbam").required() == ["gate_channels"]


def test_a_meta_tensor_is_refused() -> None:
    sd = {k: v.to("meta") for k, v in cbam_state_dict(16, 4).items()}
    with pytest.raises(CheckpointError, match="meta tensor"):
        official.load("cbam", cbam_constructor(16, 4), sd)


def test_batchnorm_counter_is_optional_and_checked_when_present() -> None:
    sd = cbam_state_dict(16, 4)
    counter = "SpatialGate.spatial.bn.num_batches_tracked"
    run = official.load("cbam", cbam_constructor(16, 4), {k: v for k, v in sd.items() if k != counter})
    assert not run.report and int(run.module.spatial_bn.num_batches_tracked) == 0
    with pytest.raises(CheckpointError, match="expected an integer tensor"):
        official.load("cbam", cbam_constructor(16, 4), {**sd, counter: torch.tensor(1.0)})


def test_sync_batchnorm_extras_of_hot_are_accepted() -> None:
    if "hot_part_attention" not in fixture_names():
        pytest.skip("parity fixture hot_part_attention not available")
    case = fixture_cases("hot_part_attention")[0]
    extras = {"cbr_part.1._tmp_running_mean": torch.zeros(16), "cbr_part.1._running_iter": torch.ones(1)}
    run = official.load("hot_part_attention", case.constructor, {**case.params, **extras})
    assert not run.report
    with pytest.raises(CheckpointError, match="_tmp_running_var"):
        official.load(
            "hot_part_attention",
            case.constructor,
            {**case.params, "cbr_part.1._tmp_running_var": torch.ones(3)},
        )
