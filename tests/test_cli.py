"""The attnzoo command line and the generated README table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnzoo.cli import main
from attnzoo.docs import END, START, mechanism_table, update_readme

ROOT = Path(__file__).resolve().parents[1]


def test_list_and_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--family", "feature_map"]) == 0
    out = capsys.readouterr().out
    assert "eca" in out and "mhsa" not in out
    assert main(["info", "eca"]) == 0
    out = capsys.readouterr().out
    assert "BangguWu/ECANet" in out and "ledger" in out


def test_unknown_mechanism_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "ecaa"]) == 2
    assert "closest: eca" in capsys.readouterr().err


def test_report_quick_writes_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--quick", "--only", "se,eca", "--out", str(tmp_path), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [r["name"] for r in doc["results"]] == ["se", "eca"]
    report = (tmp_path / "report.md").read_text()
    assert "| `eca` | feature_map |" in report
    assert (tmp_path / "latency.png").exists() and (tmp_path / "memory.png").exists()
    assert (
        main(
            [
                "bench",
                "--from",
                str(tmp_path / "bench.json"),
                "--out",
                str(tmp_path / "again"),
                "--against",
                str(tmp_path / "bench.json"),
            ]
        )
        == 0
    )
    assert "0 regression(s)" in capsys.readouterr().out


def test_readme_table_is_current() -> None:
    readme = ROOT / "README.md"
    assert START in readme.read_text() and END in readme.read_text()
    assert not update_readme(readme, check=True), "README table is stale: run `attnzoo readme`"


def test_table_lists_every_mechanism() -> None:
    import attnzoo

    table = mechanism_table()
    for name in attnzoo.list_mechanisms():
        assert f"| `{name}` |" in table
