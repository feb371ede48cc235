"""The documentation site, generated from the registry: one page per mechanism, family indexes, the
README as the home page and the committed reports (``make docs``; MkDocs builds it with
``mkdocs.yml``, strict, so a broken link or a page missing from the navigation fails).

Usage::

    python -m attnzoo.docsite --out build/docs-src   # the Markdown pages and .nav.json
    mkdocs build --strict                            # the HTML site in build/site

A mechanism's page holds its paper and official code, its family's contract, its equation (the
module docstring, which states the math; a mechanism whose docstring states none is an error),
its constructor arguments (:func:`attnzoo.docs.constructor_arguments`), its card, ledger, parity
status with the fixtures found under :func:`attnzoo.parity.parity_root`, the cost plots of
committed benchmark reports (:mod:`attnzoo.docsite_reports`) and a usage snippet that is run when
the page is generated, its printed output written beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import attnzoo
import attnzoo.families as families
from attnzoo.docs import constructor_arguments
from attnzoo.docsite_reports import (
    Reports,
    committed_reports,
    copy_reports,
    cost_section,
    reports_index,
    scan_reports,
)
from attnzoo.docsite_text import DocsiteError, docstring_markdown, family_contracts, inline, states_equation
from attnzoo.inputs import default_size, example_inputs
from attnzoo.parity import fixture_names, parity_root
from attnzoo.registry import FAMILIES

__all__ = ["NAV_FILE", "SECTIONS", "generate", "main", "mechanism_page", "usage_snippet"]

NAV_FILE = ".nav.json"
SECTIONS = (
    "Paper",
    "Family contract",
    "Equation",
    "Constructor arguments",
    "Card",
    "Ledger",
    "Parity",
    "Cost",
    "Usage",
)
_PARITY = {
    "official": "loads the authors' checkpoints through attnzoo's converter (`attnzoo.official.load`) and "
    "reproduces the outputs of their code in float64 (`tests/test_parity.py`)",
    "oracle": "matches a well-known peer implementation in the test suite (tests marked `oracle`)",
    "equations": "matches a float64 reference of the paper's equations only",
}


def _family_label(family: str) -> str:
    return family.replace("_", " ").capitalize()


def _paper(card: attnzoo.Card) -> str:
    title = inline(card.paper)
    paper = f"[{title}](https://arxiv.org/abs/{card.arxiv})" if card.arxiv else title
    year = f" ({card.year})" if card.year else ""
    if card.official_repo:
        commit = f" at commit `{card.official_commit}`" if card.official_commit else ""
        code = f"[{card.official_repo}](https://github.com/{card.official_repo}){commit}"
    else:
        code = "none published"
    lines = [f"{paper}{year}.", "", f"Official code: {code}."]
    if card.aliases:
        lines += ["", "Also created as: " + ", ".join(f"`{a}`" for a in card.aliases) + "."]
    return "\n".join(lines)


def _arguments(name: str) -> str:
    lines = ["| argument | type | default | meaning |", "|---|---|---|---|"]
    for arg in constructor_arguments(name):
        default = "required" if arg.required else f"`{arg.default!r}`"
        kind = " (keyword only)" if arg.keyword_only else ""
        annotation = f"`{arg.annotation}`" if arg.annotation else "–"
        meaning = inline(arg.doc, cell=True) if arg.doc else "–"
        lines.append(f"| `{arg.name}`{kind} | {annotation} | {default} | {meaning} |")
    return "\n".join(lines)


def _card_table(card: attnzoo.Card) -> str:
    rows = [
        ("time", inline(card.time_complexity, cell=True) or "–"),
        ("memory", inline(card.memory_complexity, cell=True) or "–"),
        ("layouts", ", ".join(f"`{layout}`" for layout in card.layouts)),
        ("spatial dims", str(card.spatial_dims)),
        ("causal variant", "causal only" if card.causal_only else "yes" if card.causal else "no"),
        ("any input size", "yes" if card.variable_size else "no (built for one size)"),
        ("extra forward inputs", ", ".join(f"`{k}`" for k in card.extra_inputs) or "none"),
        *(
            [("`key_padding_mask`", inline(families.key_padding_support(card), cell=True))]
            if card.family == "token_mixer"
            else []
        ),
        ("tiny configuration", ", ".join(f"`{k}={_literal(v)}`" for k, v in card.tiny.items()) or "–"),
    ]
    lines = ["| card | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    skips = dict(card.conformance.get("skip", {}))
    lines += (
        ["Conformance checks skipped, each with its reason:", ""]
        if skips
        else ["No conformance check is skipped."]
    )
    lines += [f"- `{check}`: {inline(reason)}" for check, reason in sorted(skips.items())]
    return "\n".join(lines)


def _parity(card: attnzoo.Card, root: Path) -> str:
    lines = [f"Status: **{card.parity}**: {_PARITY[card.parity]}."]
    if not card.parity_fixtures:
        return "\n".join([*lines, "", "No parity fixture folder is named by the card."])
    found = set(fixture_names(root))
    lines += ["", "Fixtures (`$ATTNZOO_PARITY_DIR`, default `../shared/parity`) at build time:", ""]
    for folder in card.parity_fixtures:
        if folder not in found:
            lines.append(f"- `{folder}`: **missing** from the fixture root")
            continue
        meta = json.loads((root / folder / "meta.json").read_text())
        official = meta.get("official", {})
        source = ", ".join(f"`{official[k]}`" for k in ("file", "symbol") if official.get(k))
        lines.append(
            f"- `{folder}`: present, {len(meta['cases'])} case(s)" + (f" of {source}" if source else "")
        )
    return "\n".join(lines)


def _equation(name: str) -> str:
    module = sys.modules[attnzoo.mechanism_class(name).__module__]
    text = docstring_markdown(module.__doc__ or "")
    if not states_equation(text):
        raise DocsiteError(f"{name}: the docstring of {module.__name__} states no equation to document")
    return f"From the docstring of `{module.__name__}`:\n\n{text}"


def _run(code: str) -> str:
    """Run a snippet in a fresh namespace and return what it printed."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})
    return buffer.getvalue().strip()


def _literal(value: Any) -> str:
    """``value`` as Python source, strings in double quotes."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    return isinstance(value, torch.Tensor)


def _create_call(name: str, kwargs: Mapping[str, Any]) -> list[str]:
    """``attn = attnzoo.create(name, **kwargs)`` as source lines, one argument a line when long."""
    args = [f'"{name}"', *(f"{k}={_literal(v)}" for k, v in kwargs.items())]
    line = f"attn = attnzoo.create({', '.join(args)})"
    return [line] if len(line) <= 100 else ["attn = attnzoo.create(", *(f"    {a}," for a in args), ")"]


def usage_snippet(name: str) -> str:
    """Python that creates mechanism ``name`` with its card's tiny configuration and runs a forward on
    example inputs of its family contract; run here, its printed output is written in its last line."""
    card = attnzoo.card(name)
    module = attnzoo.create(name, **card.tiny)
    size = default_size(card)
    example = example_inputs(module, size=size)
    params = inspect.signature(module.forward).parameters.values()
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    if len(positional) != len(example.args):
        raise DocsiteError(
            f"{name}: forward takes {positional} but its example has {len(example.args)} inputs"
        )
    drawn = [k for k, v in example.kwargs.items() if _holds_tensor(v)]
    lines = ["import torch", "import attnzoo"]
    lines += ["from attnzoo.inputs import example_inputs"] if drawn else []
    lines += ["", "torch.manual_seed(0)", *_create_call(name, card.tiny)]
    lines += [f"{arg} = torch.randn{tuple(t.shape)}" for arg, t in zip(positional, example.args)]
    if drawn:
        lines.append(
            f"extra = example_inputs(attn, size={size!r}).kwargs  # {', '.join(drawn)}, drawn as in the tests"
        )
    call = [*positional, *(f"{k}={_literal(v)}" for k, v in example.kwargs.items() if k not in drawn)]
    call += [f'{k}=extra["{k}"]' for k in drawn]
    lines.append(f"out = attn({', '.join(call)})")
    shapes = (
        "tuple(out.pooled.shape), tuple(out.attention.shape)"
        if card.family == "pooling"
        else "tuple(out.shape)"
    )
    lines.append(f"print({shapes})")
    code = "\n".join(lines)
    return f"{code}  # {_run(code)}"


def mechanism_page(name: str, reports: Reports, contracts: dict[str, str], fixtures: Path) -> str:
    """The Markdown page of mechanism ``name`` (one section per entry of :data:`SECTIONS`)."""
    card = attnzoo.card(name)
    family = f"[{_family_label(card.family)}](../families/{card.family}.md)"
    body = {
        "Paper": _paper(card),
        "Family contract": f"{family}: {contracts[card.family]}",
        "Equation": _equation(name),
        "Constructor arguments": _arguments(name),
        "Card": _card_table(card),
        "Ledger": "\n".join(f"- {inline(line)}" for line in card.ledger) or "No deviation is recorded.",
        "Parity": _parity(card, fixtures),
        "Cost": cost_section(name, reports),
        "Usage": f"```python\n{usage_snippet(name)}\n```",
    }
    parts = [f"# {name}", "", inline(card.summary), ""]
    for section in SECTIONS:
        parts += [f"## {section}", "", body[section].rstrip(), ""]
    return "\n".join(parts)


def _family_class(family: str) -> type:
    cls = attnzoo.mechanism_class(attnzoo.list_mechanisms(family)[0])
    return next(k for k in cls.__mro__ if k.__module__ == families.__name__ and k is not families.Mechanism)


def _index_rows(names: list[str], prefix: str, family_column: bool) -> list[str]:
    head = (
        "| mechanism | family | paper | parity | summary |"
        if family_column
        else "| mechanism | paper | parity | time |"
    )
    lines = [head, "|---|---|---|---|---|" if family_column else "|---|---|---|---|"]
    for name in names:
        card = attnzoo.card(name)
        link = f"[`{name}`]({prefix}{name}.md)"
        paper = f"{inline(card.paper, cell=True)} ({card.year or '–'})"
        if family_column:
            lines.append(
                f"| {link} | {card.family} | {paper} | {card.parity} | {inline(card.summary, cell=True)} |"
            )
        else:
            time = inline(card.time_complexity, cell=True) or "–"
            lines.append(f"| {link} | {paper} | {card.parity} | {time} |")
    return lines


def family_page(family: str, contracts: dict[str, str]) -> str:
    """The index page of ``family``: its contract, its base class and a table of its mechanisms."""
    cls = _family_class(family)
    names = attnzoo.list_mechanisms(family)
    return "\n".join(
        [
            f"# {_family_label(family)}",
            "",
            f"Contract: {contracts[family]}",
            "",
            f"Base class `attnzoo.{cls.__name__}`:",
            "",
            docstring_markdown(cls.__doc__ or ""),
            f"## Mechanisms ({len(names)})",
            "",
            *_index_rows(names, "../mechanisms/", family_column=False),
            "",
        ]
    )


def _home(readme: str) -> str:
    """The README with the mechanism names of its tables linked to their pages."""
    lines = []
    for line in readme.splitlines():
        for name in attnzoo.list_mechanisms():
            if line.startswith(f"| `{name}` |"):
                line = f"| [`{name}`](mechanisms/{name}.md) |" + line[len(f"| `{name}` |") :]
        lines.append(line)
    return "\n".join(lines) + "\n"


def _previous(out: Path) -> bool:
    """Whether ``out`` holds a previous generation (its nav file); refuse any other non-empty folder."""
    if not out.exists() or not any(out.iterdir()):
        return False
    if not (out / NAV_FILE).is_file():
        raise DocsiteError(
            f"--out {out} is a non-empty folder that holds no generated site: refusing to clear it"
        )
    return True


def generate(
    out: Path, *, root: Path, committed: list[str] | None = None, fixtures: Path | None = None
) -> list[str]:
    """Write the site's pages and its navigation (``NAV_FILE``) into ``out``; return the pages written.

    Args:
        out: the MkDocs ``docs_dir``; emptied first if it holds a previous generation.
        root: the repository checkout (its ``README.md`` and ``reports/``).
        committed: the committed files under ``reports/`` (default: ``git ls-files reports`` in ``root``).
        fixtures: the parity fixture root (default: :func:`attnzoo.parity.parity_root`).
    """
    if not (root / "README.md").is_file():
        raise DocsiteError(f"--root {root} holds no README.md: pass the repository checkout")
    previous = _previous(out)
    committed = committed_reports(root) if committed is None else committed
    fixtures = parity_root() if fixtures is None else fixtures
    reports = scan_reports(root, committed)
    contracts = family_contracts()
    if set(contracts) != set(FAMILIES):
        raise DocsiteError(f"attnzoo.families documents {sorted(contracts)}, the registry has {FAMILIES}")
    pages: dict[str, str] = {"index.md": _home((root / "README.md").read_text())}
    names = attnzoo.list_mechanisms()
    pages["mechanisms/index.md"] = "\n".join(
        [f"# All mechanisms ({len(names)})", "", *_index_rows(names, "", family_column=True), ""]
    )
    nav: list[Any] = [{"Home": "index.md"}]
    mechanisms: list[Any] = [{"All mechanisms": "mechanisms/index.md"}]
    for family in FAMILIES:
        members = attnzoo.list_mechanisms(family)
        if not members:
            continue
        pages[f"families/{family}.md"] = family_page(family, contracts)
        entries: list[Any] = [{"Overview": f"families/{family}.md"}]
        for name in members:
            pages[f"mechanisms/{name}.md"] = mechanism_page(name, reports, contracts, fixtures)
            entries.append({name: f"mechanisms/{name}.md"})
        mechanisms.append({_family_label(family): entries})
    pages["reports/index.md"] = reports_index(reports)
    titles = {page.path: page.title for page in reports.pages}
    nav += [
        {"Mechanisms": mechanisms},
        {"Reports": [{"All reports": "reports/index.md"}, *({t: p} for p, t in titles.items())]},
    ]
    if previous:  # every page is made before the folder is touched: a failure leaves the last site
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for path, text in pages.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
    copy_reports(root, reports, out)
    (out / NAV_FILE).write_text(json.dumps(nav, indent=1))
    return sorted([*pages, *titles])


def main(argv: list[str] | None = None) -> int:
    """``python -m attnzoo.docsite [--out DIR] [--root CHECKOUT]``: generate the site's pages."""
    parser = argparse.ArgumentParser(prog="python -m attnzoo.docsite", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/docs-src"), help="the MkDocs docs_dir")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository checkout (default: .)")
    args = parser.parse_args(argv)
    pages = generate(args.out, root=args.root)
    print(f"wrote {len(pages)} pages to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
