"""The committed reports in the documentation site: which exist (``git ls-files reports``), which
mechanisms each measures, and the cost plots of the benchmark reports (``attnzoo report``).

Only committed files count: a report a user ran locally (``reports/`` is git-ignored) is not a claim
of the project, so it never reaches the site. A report folder's results JSON names the mechanisms
it measures (``name`` / ``mechanism`` keys); a folder whose JSON is a benchmark document (``results``
with ``sizes``) is a cost report, and the images its Markdown embeds are its cost plots.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import attnzoo
from attnzoo.bench.report import summarise
from attnzoo.docsite_text import DocsiteError, inline
from attnzoo.registry import FAMILIES

__all__ = [
    "ReportPage",
    "Reports",
    "committed_reports",
    "copy_reports",
    "cost_section",
    "reports_index",
    "scan_reports",
]

_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


@dataclass
class ReportPage:
    """One committed Markdown report.

    Attributes:
        path: its path in the repository, which is also its path in the site (``reports/...``).
        title: its first ``# `` heading.
        mentions: the registered mechanisms (variants stripped) the results JSON beside it names.
        bench: the benchmark document beside it, when it is a cost report.
        images: the committed images it embeds (repository paths).
    """

    path: str
    title: str
    mentions: set[str] = field(default_factory=set)
    bench: dict[str, Any] | None = None
    images: list[str] = field(default_factory=list)


@dataclass
class Reports:
    """The committed files under ``reports/`` and the report pages among them."""

    files: list[str]
    pages: list[ReportPage]


def committed_reports(root: Path) -> list[str]:
    """The files under ``reports/`` that git tracks in the checkout ``root``."""
    try:
        run = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "reports"], capture_output=True, text=True, check=False
        )
    except FileNotFoundError as err:
        raise DocsiteError("git is needed to list the committed reports (git ls-files reports)") from err
    if run.returncode != 0:
        raise DocsiteError(f"git ls-files reports failed in {root}: {run.stderr.strip()}")
    return sorted(f for f in run.stdout.split("\0") if f)


def _names(value: Any) -> set[str]:
    """Every string under a ``name`` or ``mechanism`` key of a JSON value, ``[variant]`` suffixes cut."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("name", "mechanism") and isinstance(item, str):
                found.add(item.split("[", 1)[0])
            else:
                found |= _names(item)
    elif isinstance(value, list):
        for item in value:
            found |= _names(item)
    return found


def _is_bench(doc: Any) -> bool:
    results = doc.get("results") if isinstance(doc, dict) else None
    return (
        isinstance(results, list)
        and bool(results)
        and all(isinstance(r, dict) and "name" in r and "sizes" in r for r in results)
    )


def scan_reports(root: Path, committed: list[str]) -> Reports:
    """The report pages among the ``committed`` files, read from the checkout ``root``."""
    missing = [f for f in committed if not (root / f).is_file()]
    if missing:
        raise DocsiteError(f"committed report files missing from the checkout {root}: {missing}")
    registered = set(attnzoo.list_mechanisms())
    pages = []
    for path in (f for f in committed if f.endswith(".md")):
        folder = PurePosixPath(path).parent
        text = (root / path).read_text()
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), path)
        page = ReportPage(path, title)
        for other in committed:
            if PurePosixPath(other).parent == folder and other.endswith(".json"):
                doc = json.loads((root / other).read_text())
                page.mentions |= _names(doc) & registered
                page.bench = doc if _is_bench(doc) else page.bench
        images = [str(folder / src) for src in _IMAGE.findall(text) if "://" not in src]
        page.images = [img for img in images if img in committed]
        pages.append(page)
    return Reports(list(committed), pages)


def copy_reports(root: Path, reports: Reports, out: Path) -> None:
    """Copy every committed report file into the site folder ``out`` at its repository path."""
    for path in reports.files:
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / path, out / path)


def reports_index(reports: Reports) -> str:
    """The page that lists the committed reports."""
    lines = [
        "# Reports",
        "",
        "The reports committed to the repository, as committed: each is a claim, made by the command it "
        "names. A report run locally is not part of the site.",
        "",
    ]
    if not reports.pages:
        return "\n".join([*lines, "No report is committed.", ""])
    lines += ["| report | file | mechanisms it names |", "|---|---|---|"]
    for page in reports.pages:
        named = ", ".join(f"`{n}`" for n in sorted(page.mentions)) or "–"
        lines.append(
            f"| [{inline(page.title, cell=True)}]({page.path[len('reports/') :]}) | `{page.path}` | {named} |"
        )
    return "\n".join([*lines, ""])


def _family_images(images: list[str], name: str) -> list[str]:
    """The plots of ``images`` for ``name``: a plot named for one family (``*_<family>.png``, e.g. the
    leaderboard's one figure per family) only on the pages of that family's mechanisms."""
    family = attnzoo.card(name).family
    return [
        img
        for img in images
        if not any(PurePosixPath(img).stem.endswith(f"_{f}") for f in FAMILIES)
        or PurePosixPath(img).stem.endswith(f"_{family}")
    ]


def cost_section(name: str, reports: Reports) -> str:
    """The cost plots of the committed benchmark reports that measure ``name`` (with its scaling
    exponent and crossover from :func:`attnzoo.bench.report.summarise`), then links to the other
    committed reports that name it; says so when no committed plot exists."""
    lines: list[str] = []
    bench = [p for p in reports.pages if p.bench is not None and name in p.mentions]
    for page in bench:
        rows = [r for r in summarise(page.bench) if r["name"].split("[", 1)[0] == name]
        lines += [f"From [{inline(page.title)}](../{page.path}):", ""]
        lines += [
            "| run | latency exponent (log-log slope in N) | faster than softmax from N |",
            "|---|---|---|",
        ]
        for row in rows:
            exponent = "–" if row["exponent"] is None else f"{row['exponent']:.2f}"
            crossover = "–" if row["crossover"] is None else f"{row['crossover']:.0f}"
            lines.append(f"| `{row['name']}` | {exponent} | {crossover} |")
        lines.append("")
        lines += [f"![{PurePosixPath(img).name}](../{img})" for img in _family_images(page.images, name)] or [
            "The report embeds no committed plot."
        ]
        lines.append("")
    if not bench:
        lines += [
            f"No committed cost plot: no committed benchmark report (`attnzoo report`) measures `{name}`. "
            "The card's formulas are in [Card](#card).",
            "",
        ]
    others = [p for p in reports.pages if p.bench is None and name in p.mentions]
    if others:
        lines.append(
            "Also measured in: " + ", ".join(f"[{inline(p.title)}](../{p.path})" for p in others) + "."
        )
    return "\n".join(lines).rstrip() + "\n"
