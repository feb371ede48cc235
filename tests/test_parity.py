"""Every case of every fixture folder under shared/parity, through attnzoo.official.load, in float64.

A folder with no adapter yet is an expected failure that names the mechanism, so coverage stays
visible in every test run. An adapter without a fixture folder must be listed in ``WITHOUT_FIXTURE``
with the test that checks it against the official code's key layout and equations."""

from __future__ import annotations

import pytest
import torch

from attnzoo import official
from attnzoo.parity import fixture_cases, fixture_names, parity_root, run_case

FIXTURES = fixture_names()
WITHOUT_FIXTURE = {
    "cbam": "tests/mechanisms/feature_map/test_cbam.py (checkpoint written from MODELS/cbam.py)",
}


def test_fixture_root_exists() -> None:
    assert FIXTURES, f"no parity fixtures found under {parity_root()} (set ATTNZOO_PARITY_DIR)"


@pytest.mark.parametrize("name", FIXTURES)
def test_official_parity(name: str) -> None:
    if name not in official.available():
        pytest.xfail(f"no official adapter for fixture {name!r} yet")
    cases = fixture_cases(name)
    assert cases, f"fixture {name} has no cases"
    for case in cases:
        outputs = run_case(case)
        for out_name, got, want in zip(case.output_names, outputs, case.outputs):
            torch.testing.assert_close(
                got,
                want,
                atol=case.atol,
                rtol=case.rtol,
                msg=lambda m, c=case, o=out_name: f"{name}/{c.file} output {o}: {m}",
            )


def test_available_names_are_fixture_folders() -> None:
    unknown = sorted(set(official.available()) - set(FIXTURES) - set(WITHOUT_FIXTURE))
    assert not unknown, f"adapters without a fixture folder: {unknown}"
    assert set(WITHOUT_FIXTURE) <= set(official.available()), "WITHOUT_FIXTURE names a missing adapter"
    assert not set(WITHOUT_FIXTURE) & set(FIXTURES), "an adapter with a fixture is listed in WITHOUT_FIXTURE"


def test_load_unknown_name_lists_available() -> None:
    with pytest.raises(KeyError, match="available"):
        official.load("no_such_mechanism", {}, {})
