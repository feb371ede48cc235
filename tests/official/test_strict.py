"""Strict official loading, for every adapter of :mod:`attnzoo.official`: each kind of bad constructor
or checkpoint raises one :class:`CheckpointError` naming every offender before torch sees the data,
and ``strict=False`` loads partially and says what it skipped.

Each adapter runs on its fixture's own constructor and state_dict (the first case of each official
class and key set); ``cbam``, which has no fixture, on the checkpoint written from the official code
in ``tests/official/layouts.py``. A missing fixture skips as "not available", which CI fails.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import torch
from safetensors import safe_open
from tests.official.layouts import cbam_constructor, cbam_state_dict

from attnzoo import official
from attnzoo.official import CheckpointError, PartialLoadWarning
from attnzoo.parity import FixtureCase, fixture_cases, fixture_names, parity_root

EXTRA = "not_an_official.weight"
HAND_BUILT = {"cbam": (cbam_constructor(16, 4), cbam_state_dict(16, 4))}


def _distinct_cases(name: str) -> list[tuple[int, bool]]:
    """``(index, has parameters)`` of the first case of each ``(symbol, state_dict keys)``."""
    folder = parity_root() / name
    out, seen = [], set()
    for i, case in enumerate(json.loads((folder / "meta.json").read_text())["cases"]):
        with safe_open(str(folder / case["file"]), "pt") as f:
            keys = frozenset(k for k in f.keys() if k.startswith("param."))
        if (case.get("symbol"), keys) not in seen:
            seen.add((case.get("symbol"), keys))
            out.append((i, bool(keys)))
    return out


def _parametrize() -> tuple[list[Any], list[Any]]:
    every, parametric = [], []
    fixtures = set(fixture_names())
    for name in official.available():
        if name in HAND_BUILT:
            every.append(pytest.param(name, 0, id=name))
            parametric.append(pytest.param(name, 0, id=name))
        elif name not in fixtures:
            every.append(pytest.param(name, -1, id=f"{name}-no-fixture"))
        else:
            for i, has_params in _distinct_cases(name):
                every.append(pytest.param(name, i, id=f"{name}-case{i + 1}"))
                if has_params:
                    parametric.append(pytest.param(name, i, id=f"{name}-case{i + 1}"))
    return every, parametric


EVERY, PARAMETRIC = _parametrize()


@cache
def _cases(name: str) -> list[FixtureCase]:
    return fixture_cases(name)


@dataclass
class Example:
    name: str
    constructor: dict[str, Any]
    state_dict: dict[str, Any]
    symbol: str | None
    case: FixtureCase | None

    def load(
        self, constructor: Any = None, state_dict: Any = None, strict: bool = True
    ) -> official.OfficialRun:
        ctor = self.constructor if constructor is None else constructor
        sd = self.state_dict if state_dict is None else state_dict
        return official.load(self.name, ctor, sd, symbol=self.symbol, strict=strict)

    def rejects(
        self, constructor: Any = None, state_dict: Any = None, strict: bool = True
    ) -> CheckpointError:
        with pytest.raises(CheckpointError) as info:
            self.load(constructor, state_dict, strict)
        return info.value

    def weights(self) -> list[str]:
        return [k for k, v in self.state_dict.items() if v.is_floating_point()]


def _example(name: str, index: int) -> Example:
    if name in HAND_BUILT:
        constructor, state_dict = HAND_BUILT[name]
        return Example(name, copy.deepcopy(constructor), dict(state_dict), None, None)
    if index < 0:
        pytest.skip(f"parity fixture {name} not available under {parity_root()}")
    case = _cases(name)[index]
    return Example(name, copy.deepcopy(case.constructor), dict(case.params), case.symbol, case)


def _kinds(err: CheckpointError) -> dict[str, str]:
    return {p.key: p.kind for p in err.problems}


@pytest.mark.parametrize(("name", "index"), EVERY)
def test_fixture_loads_strictly_and_silently(name: str, index: int) -> None:
    ex = _example(name, index)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PartialLoadWarning)
        run = ex.load()
    assert not run.report


@pytest.mark.parametrize(("name", "index"), EVERY)
def test_constructor_typo_is_named(name: str, index: int) -> None:
    ex = _example(name, index)
    sig = official.signature(name, ex.symbol)
    key = next(iter(ex.constructor), None) or next(iter(sig.args), "dim")
    typo = key.replace("_", "") if "_" in key else key + "s"
    assert typo not in sig.args
    ctor = {(typo if k == key else k): v for k, v in ex.constructor.items()} or {typo: 1}
    err = ex.rejects(ctor)
    assert _kinds(err)[typo] == "unknown_argument" and repr(typo) in str(err)
    if key in sig.args:
        assert f"did you mean {key!r}" in str(err)


@pytest.mark.parametrize(("name", "index"), EVERY)
def test_extra_key_is_the_only_problem(name: str, index: int) -> None:
    ex = _example(name, index)
    err = ex.rejects(state_dict={**ex.state_dict, EXTRA: torch.zeros(3)})
    assert _kinds(err) == {EXTRA: "unexpected_key"} and "strict=False" in str(err)


@pytest.mark.parametrize(("name", "index"), EVERY)
def test_constructor_and_value_problems_are_listed_together(name: str, index: int) -> None:
    ex = _example(name, index)
    key = (ex.weights() or [EXTRA])[0]
    err = ex.rejects({**ex.constructor, "no_such_argument": 1}, {**ex.state_dict, key: [0.0, 1.0]})
    assert _kinds(err) == {"no_such_argument": "unknown_argument", key: "not_a_tensor"}


@pytest.mark.parametrize(("name", "index"), EVERY)
def test_strict_false_reports_an_ignored_key(name: str, index: int) -> None:
    ex = _example(name, index)
    with pytest.warns(PartialLoadWarning, match=EXTRA):
        run = ex.load(state_dict={**ex.state_dict, EXTRA: torch.zeros(3)}, strict=False)
    assert run.report.ignored == (EXTRA,) and run.report.missing == ()


@pytest.mark.parametrize(("name", "index"), PARAMETRIC)
def test_missing_key(name: str, index: int) -> None:
    ex = _example(name, index)
    key = ex.weights()[0]
    err = ex.rejects(state_dict={k: v for k, v in ex.state_dict.items() if k != key})
    assert _kinds(err) == {key: "missing_key"} and str(tuple(ex.state_dict[key].shape)) in str(err)


@pytest.mark.parametrize(("name", "index"), PARAMETRIC)
def test_wrong_shape(name: str, index: int) -> None:
    ex = _example(name, index)
    key = ex.weights()[-1]
    bad = torch.zeros(*ex.state_dict[key].shape, 2, dtype=ex.state_dict[key].dtype)
    err = ex.rejects(state_dict={**ex.state_dict, key: bad})
    assert _kinds(err) == {key: "shape"} and str(tuple(bad.shape)) in str(err)


@pytest.mark.parametrize(("name", "index"), PARAMETRIC)
def test_non_tensor_value(name: str, index: int) -> None:
    ex = _example(name, index)
    key = ex.weights()[0]
    err = ex.rejects(state_dict={**ex.state_dict, key: ex.state_dict[key].tolist()})
    assert _kinds(err) == {key: "not_a_tensor"} and "list" in str(err)


@pytest.mark.parametrize(("name", "index"), PARAMETRIC)
def test_integer_weight(name: str, index: int) -> None:
    ex = _example(name, index)
    key = ex.weights()[0]
    err = ex.rejects(state_dict={**ex.state_dict, key: ex.state_dict[key].round().to(torch.int64)})
    assert _kinds(err) == {key: "dtype"} and "torch.int64" in str(err)


@pytest.mark.parametrize(("name", "index"), PARAMETRIC)
def test_nan_and_inf_weights_are_refused_even_when_not_strict(name: str, index: int) -> None:
    ex = _example(name, index)
    keys = ex.weights()[:2]
    sd = dict(ex.state_dict)
    for key, bad in zip(keys, (math.nan, math.inf)):
        sd[key] = sd[key].clone()
        sd[key].view(-1)[0] = bad
    for strict in (True, False):
        err = ex.rejects(state_dict=sd, strict=strict)
        assert _kinds(err) == dict.fromkeys(keys, "non_finite")
    assert "1 NaN" in str(err)


@pytest.mark.parametrize(("name", "index"), PARAMETRIC)
def test_several_problems_in_one_error(name: str, index: int) -> None:
    ex = _example(name, index)
    first, *rest = ex.weights()
    sd = {k: v for k, v in ex.state_dict.items() if k != first} | {EXTRA: torch.zeros(1)}
    want = {first: "missing_key", EXTRA: "unexpected_key"}
    if rest:
        sd[rest[-1]] = torch.full_like(ex.state_dict[rest[-1]], math.nan)
        want[rest[-1]] = "non_finite"
    err = ex.rejects(state_dict=sd)
    assert _kinds(err) == want
    assert str(err).count("\n  - ") == len(want)


@pytest.mark.parametrize(("name", "index"), PARAMETRIC)
def test_strict_false_keeps_initialised_values_of_missing_keys(name: str, index: int) -> None:
    ex = _example(name, index)
    key = ex.weights()[0]
    sd = {k: v for k, v in ex.state_dict.items() if k != key} | {EXTRA: torch.zeros(1)}
    torch.manual_seed(0)
    with pytest.warns(PartialLoadWarning, match=key):
        partial = ex.load(state_dict=sd, strict=False)
    assert partial.report.missing == (key,) and partial.report.ignored == (EXTRA,)
    torch.manual_seed(0)
    with pytest.warns(PartialLoadWarning):
        fresh = ex.load(state_dict={}, strict=False).module.state_dict()
    full = ex.load().module.state_dict()
    changed = False
    for k, got in partial.module.state_dict().items():
        init = fresh[k].to(got.dtype)
        assert torch.all((got == full[k]) | (got == init)), f"{k} mixes values from nowhere"
        changed |= not torch.equal(got, full[k])
    assert changed, f"dropping {key} left every attnzoo tensor as loaded"
    if ex.case is not None:  # the module's dtype is float32 when no floating tensor was loaded
        dtype = next(v.dtype for v in partial.module.state_dict().values() if v.is_floating_point())
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ex.case.inputs.items()}
        with torch.no_grad():
            out = partial(**{**ex.case.forward, **inputs})
        assert [o.shape for o in out] == [o.shape for o in ex.case.outputs]
