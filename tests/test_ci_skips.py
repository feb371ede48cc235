"""The CI rule of ``tests/conftest.py``: a test skipped for a missing package or fixture fails in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_TESTS = """
import pytest

def test_missing_package():
    pytest.importorskip("attnzoo_no_such_package")

def test_missing_fixture():
    pytest.skip("parity fixtures some_mechanism not available")

def test_declared_skip():
    pytest.skip("compile skipped: declared on the card")
"""


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_oracle_fails_only_in_ci(tmp_path: Path, ci: str) -> None:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(_TESTS)
    env = {**os.environ, "CI": ci}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist", "."],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    out = proc.stdout
    if ci:
        assert "2 failed, 1 skipped" in out, out
        assert "FAILED test_cases.py::test_missing_package" in out
        assert "FAILED test_cases.py::test_missing_fixture" in out
    else:
        assert "3 skipped" in out, out
