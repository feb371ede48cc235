"""The MQAR table in README.md's "Measured" section shows the committed report's numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from attnzoo.tasks.report import selected_runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "reports" / "eval" / "mqar" / "results.json"


def test_readme_mqar_table_matches_the_committed_results() -> None:
    doc = json.loads(RESULTS.read_text())
    assert doc["task"]["preset"] == "zoology-cpu" and doc["task"]["seeds"] == [0, 1, 2]
    best = {(r["mechanism"], r["seed"]): r["best_accuracy"] for r in selected_runs(doc)}
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\s*\| `(\w+)`[^|]*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", readme, re.M)
    assert {name for name, *_ in rows} == {"mhsa", "linear_attention", "based"}
    for name, *cells in rows:
        assert [float(c) for c in cells] == [round(best[name, seed], 3) for seed in (0, 1, 2)], name
