"""The MQAR table in README.md's "Measured" section shows the committed report's numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from attnzoo.tasks.report import selected_runs, selection_split

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "reports" / "eval" / "mqar" / "results.json"


def test_readme_mqar_table_matches_the_committed_results() -> None:
    doc = json.loads(RESULTS.read_text())
    assert doc["task"]["preset"] == "zoology-cpu" and doc["task"]["seeds"] == [0, 1, 2]
    assert selection_split(doc) == "validation"  # the README says so
    best = {(r["mechanism"], r["seed"]): r["test_accuracy"] for r in selected_runs(doc)}
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\s*\| `(\w+)`[^|]*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", readme, re.M)
    assert {name for name, *_ in rows} == {"mhsa", "linear_attention", "based"}
    for name, *cells in rows:
        assert [float(c) for c in cells] == [round(best[name, seed], 3) for seed in (0, 1, 2)], name


def test_readme_timm_digits_figures_match_the_committed_results() -> None:
    doc = json.loads((ROOT / "reports" / "timm" / "vit_tiny_digits" / "results.json").read_text())
    rows = {r["label"]: r for r in doc["contenders"]}
    base = next(r for r in doc["contenders"] if r["mechanism"] is None)
    text = " ".join((ROOT / "README.md").read_text().split())
    bullet = text[text.index("**timm ViT-Tiny on digits") :]
    bullet = bullet[: bullet.index("## Mechanisms")]
    assert doc["config"]["epochs"] == 2 and doc["config"]["seeds"] == [0, 1, 2]
    assert f"ViG reaches {rows['vig']['accuracy_mean']:.3f}" in bullet
    assert f"timm's attention {base['accuracy_mean']:.3f}" in bullet
    assert f"pyramid agent attention {rows['agent_attention_pvt']['accuracy_mean']:.3f}" in bullet
    ratios = {k: r["step_ms"]["min"] / base["step_ms"]["min"] for k, r in rows.items() if r["mechanism"]}
    others = [v for k, v in ratios.items() if k != "vig"]
    assert f"{ratios['vig']:.2f}x (ViG)" in bullet
    assert f"{min(others):.2f}-{max(others):.2f}x (the others)" in bullet
