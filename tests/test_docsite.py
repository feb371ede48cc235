"""The documentation site generated from the registry (``make docs``): a page per mechanism with every
section, snippets that run and print what their page says, and a strict MkDocs build that passes on
the generated site and fails on a broken link, a broken anchor or a page missing from the navigation."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
import sys
from pathlib import Path

import markdown
import pytest

import attnzoo
from attnzoo.bench.report import scaling_exponent, write_plots, write_report
from attnzoo.bench.runner import PRESETS, run_benchmarks
from attnzoo.docsite import NAV_FILE, SECTIONS, _equation, _parity, generate
from attnzoo.docsite_reports import (
    ReportPage,
    Reports,
    committed_reports,
    copy_reports,
    cost_section,
    scan_reports,
)
from attnzoo.docsite_text import DocsiteError, docstring_markdown, family_contracts, inline, states_equation
from attnzoo.registry import FAMILIES

pytestmark = pytest.mark.xdist_group("docsite")

REPO = Path(__file__).resolve().parents[1]
NAMES = attnzoo.list_mechanisms()
_SNIPPET = re.compile(r"## Usage\n\n```python\n(.*?)\n```", re.DOTALL)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docsite") / "docs-src"
    generate(out, root=REPO)
    return out


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        for value in entry.values():
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _build(docs: Path, site_dir: Path) -> None:
    """The strict MkDocs build of ``docs`` with the repository's mkdocs.yml (its hook and validation)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    build(load_config(str(REPO / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(site_dir)))


def test_one_page_per_mechanism_and_all_in_the_nav(site: Path) -> None:
    pages = sorted(p.stem for p in (site / "mechanisms").glob("*.md") if p.name != "index.md")
    assert pages == NAMES and len(pages) == len(NAMES)
    nav = _nav_pages(json.loads((site / NAV_FILE).read_text()))
    on_disk = sorted(str(p.relative_to(site)) for p in site.rglob("*.md"))
    assert sorted(nav) == on_disk
    assert {f"families/{f}.md" for f in FAMILIES if attnzoo.list_mechanisms(f)} <= set(nav)


@pytest.mark.parametrize("name", NAMES)
def test_page_has_every_section_in_order(site: Path, name: str) -> None:
    text = (site / "mechanisms" / f"{name}.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings == list(SECTIONS)
    card = attnzoo.card(name)
    sections = dict(zip(headings, re.split(r"^## .+$", text, flags=re.MULTILINE)[1:]))
    assert states_equation(sections["Equation"]), f"{name}: no equation"
    for arg in attnzoo.docs.constructor_arguments(name):
        assert f"| `{arg.name}`" in sections["Constructor arguments"]
    assert len(re.findall(r"^- ", sections["Ledger"], re.MULTILINE)) == len(card.ledger)
    assert f"**{card.parity}**" in sections["Parity"]
    for folder in card.parity_fixtures:
        assert f"`{folder}`" in sections["Parity"]
    for check in card.conformance.get("skip", {}):
        assert f"`{check}`" in sections["Card"]
    assert "cost plot" in sections["Cost"] or "![" in sections["Cost"]
    html = re.sub(r"<pre>.*?</pre>", "", _html(text), flags=re.DOTALL)
    assert not re.search(r"^\s*[-*] ", html, re.MULTILINE), f"{name}: a list marker left as text"
    assert html.count("<li>") >= len(card.ledger) + len(card.conformance.get("skip", {}))


def test_snippets_run_and_print_the_family_contract(site: Path) -> None:
    for name in NAMES:
        code = _SNIPPET.search((site / "mechanisms" / f"{name}.md").read_text()).group(1)
        printed = code.rsplit("  # ", 1)[1]
        namespace: dict = {}
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, f"<{name} snippet>", "exec"), namespace)
        assert buffer.getvalue().strip() == printed, name
        out, x = namespace["out"], namespace["x"]
        if attnzoo.card(name).family == "pooling":
            assert out.pooled.shape[0] == x.shape[0] and out.attention.shape[-1] == x.shape[1], name
        else:
            assert out.shape == x.shape, name


def test_strict_build_passes_and_fails_on_broken_links(site: Path, tmp_path: Path) -> None:
    from mkdocs.exceptions import Abort

    docs = tmp_path / "docs"
    shutil.copytree(site, docs)
    _build(docs, tmp_path / "site")
    assert (tmp_path / "site" / "mechanisms" / "mhsa" / "index.html").is_file()
    assert not (tmp_path / "site" / NAV_FILE).exists()
    page = docs / "mechanisms" / "mhsa.md"
    original = page.read_text()
    for broken in ("[gone](no_such_page.md)", "[gone](#no-such-anchor)"):
        page.write_text(original + f"\n{broken}\n")
        with pytest.raises(Abort):
            _build(docs, tmp_path / "site")
    page.write_text(original)
    (docs / "orphan.md").write_text("# not in the navigation\n")
    with pytest.raises(Abort):
        _build(docs, tmp_path / "site")
    (docs / "orphan.md").unlink()
    (docs / "families" / "gate.md").unlink()
    with pytest.raises(Abort):
        _build(docs, tmp_path / "site")


def test_build_without_generated_nav_names_the_generator(
    site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mkdocs.exceptions import Abort

    docs = tmp_path / "docs"
    shutil.copytree(site, docs)
    (docs / NAV_FILE).unlink()
    with pytest.raises(Abort):
        _build(docs, tmp_path / "site")
    assert f"{NAV_FILE} is missing" in caplog.text and "python -m attnzoo.docsite --out" in caplog.text


def test_home_is_the_readme_with_linked_mechanisms(site: Path) -> None:
    home = (site / "index.md").read_text()
    readme = (REPO / "README.md").read_text()
    assert home.splitlines()[0] == readme.splitlines()[0]
    assert len(home.splitlines()) == len(readme.splitlines())
    for name in NAMES:
        if f"| `{name}` |" in readme:
            assert f"| [`{name}`](mechanisms/{name}.md) |" in home


def test_committed_reports_are_pages_and_uncommitted_are_not(site: Path) -> None:
    committed = committed_reports(REPO)
    assert all(f.startswith("reports/") and (REPO / f).is_file() for f in committed)
    copied = sorted(str(p.relative_to(site)) for p in (site / "reports").rglob("*") if p.is_file())
    assert copied == sorted([*committed, "reports/index.md"])


def test_committed_reports_outside_a_checkout_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DocsiteError, match="git ls-files"):
        committed_reports(tmp_path)


def _bench_repo(root: Path) -> list[str]:
    """A checkout holding one committed benchmark report of mhsa, measured and written as
    ``attnzoo report`` does (two small sizes)."""
    config = dataclasses.replace(
        PRESETS["quick"], seq_sizes=(16, 64), repeats=2, budget_s=0.05, timeout_s=120.0
    )
    doc = run_benchmarks(["mhsa"], config, progress=False)
    folder = root / "reports" / "bench"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(doc))
    write_report(doc, folder, write_plots(doc, folder))
    (root / "README.md").write_text("# attnzoo\n")
    return sorted(str(p.relative_to(root)) for p in folder.iterdir())


def test_cost_section_embeds_committed_bench_plots(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    committed = _bench_repo(root)
    reports = scan_reports(root, committed)
    assert [(p.path, p.mentions) for p in reports.pages] == [("reports/bench/report.md", {"mhsa"})]
    text = cost_section("mhsa", reports)
    assert "![latency.png](../reports/bench/latency.png)" in text
    assert "![memory.png](../reports/bench/memory.png)" in text
    doc = json.loads((root / "reports/bench/results.json").read_text())
    assert f"| {scaling_exponent(doc['results'][0]):.2f} |" in text
    assert "No committed cost plot" in cost_section("eca", reports)
    uncommitted = scan_reports(root, [f for f in committed if not f.endswith("latency.png")])
    assert "latency.png" not in cost_section("mhsa", uncommitted)
    copy_reports(root, reports, tmp_path / "docs")
    assert (tmp_path / "docs" / "reports" / "bench" / "latency.png").is_file()


def test_cost_section_embeds_only_the_plots_of_the_mechanism_s_family() -> None:
    images = [
        "reports/leaderboard_cost_token_mixer.png",
        "reports/leaderboard_cost_gate.png",
        "reports/b/latency.png",
    ]
    page = ReportPage("reports/leaderboard.md", "Leaderboard", mentions={"mhsa", "se"}, bench={"results": []})
    page.images = images
    reports = Reports(images, [page])
    mhsa, se = cost_section("mhsa", reports), cost_section("se", reports)
    assert "leaderboard_cost_token_mixer.png" in mhsa and "leaderboard_cost_gate.png" not in mhsa
    assert "leaderboard_cost_token_mixer.png" not in se and "latency.png" in se and "latency.png" in mhsa


def test_generate_refuses_to_clear_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DocsiteError, match="refusing"):
        generate(tmp_path, root=REPO, committed=[])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_parity_section_reports_fixtures_found_and_missing(tmp_path: Path) -> None:
    card = attnzoo.card("eca")
    assert "**missing**" in _parity(card, tmp_path)
    folder = tmp_path / card.parity_fixtures[0]
    folder.mkdir()
    meta = {"official": {"file": "models/eca_module.py", "symbol": "eca_layer"}, "cases": [{}, {}]}
    (folder / "meta.json").write_text(json.dumps(meta))
    text = _parity(card, tmp_path)
    assert "present, 2 case(s) of `models/eca_module.py`, `eca_layer`" in text and "missing" not in text


def test_a_docstring_without_math_is_an_error_that_keeps_the_last_site(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = sys.modules[attnzoo.mechanism_class("eca").__module__]
    monkeypatch.setattr(module, "__doc__", "Efficient channel attention, in words only.")
    with pytest.raises(DocsiteError, match=r"eca: .* no equation"):
        _equation("eca")
    last = tmp_path / "docs"
    shutil.copytree(site, last)
    before = sorted(last.rglob("*"))
    with pytest.raises(DocsiteError, match="eca"):
        generate(last, root=REPO)
    assert sorted(last.rglob("*")) == before


def _html(text: str) -> str:
    return markdown.markdown(text, extensions=["tables", "fenced_code", "sane_lists"])


def test_docstring_markdown_keeps_math_literal() -> None:
    doc = """Title with ``a * b`` and :func:`attnzoo.kernels.attention`.

    The gate is::

        out = x * a * b_1        (B, C, H, W)

    Prose with x * y * z, w_1 and w_2, [j] and <q>.

    =====  ===
    name   k
    =====  ===
    T      5
    =====  ===
    """
    text = docstring_markdown(doc)
    html = _html(text)
    assert "<em>" not in html and "<strong>" not in html and "<h1" not in html
    assert "<pre><code" in html and "out = x * a * b_1" in html and "The gate is:</p>" in html
    assert "<code>attnzoo.kernels.attention</code>" in html and "<code>a * b</code>" in html
    assert "x * y * z, w_1 and w_2, [j] and &lt;q&gt;" in html
    assert "T      5" in html
    assert states_equation(text) and not states_equation(docstring_markdown("Only words, no math."))


def test_inline_cells_keep_pipes_inside_the_cell() -> None:
    html = _html(f"| a | b |\n|---|---|\n| {inline('O(sum_g |g|^2 C) and ``x | y``', cell=True)} | z |\n")
    assert html.count("<td>") == 2 and "O(sum_g |g|^2 C)" in html and "<code>x | y</code>" in html


def test_family_contracts_come_from_the_families_docstring() -> None:
    contracts = family_contracts()
    assert set(contracts) == set(FAMILIES)
    assert "forward(x: (B, N, C), *, size=None) -> (B, N, C)" in contracts["token_mixer"]
    assert "PoolOutput" in contracts["pooling"] and "mask (B, N)" in contracts["pooling"]
