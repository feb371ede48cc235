"""Text for the documentation site: reStructuredText-flavoured docstrings turned into Markdown that
Python-Markdown (MkDocs) renders as written, and the family contracts read from
:mod:`attnzoo.families`.

The docstrings of attnzoo write code as ````x````, cross-references as ``:func:`attnzoo.x```,
equations as indented literal blocks (after ``::`` or a blank line) and small tables as RST simple
tables. :func:`docstring_markdown` keeps each as what it is: code spans, fenced ``text`` blocks for
the equations and tables, and prose whose Markdown metacharacters are escaped, so an equation such
as ``x * a * b`` never turns into emphasis.
"""

from __future__ import annotations

import inspect
import re

import attnzoo.families as families

__all__ = ["DocsiteError", "docstring_markdown", "family_contracts", "inline", "states_equation"]


class DocsiteError(ValueError):
    """Raised when the documentation cannot be generated from what the registry and the repository hold."""


_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|obj|exc):`~?([^`]+)`")
_CODE = re.compile(r"``(.+?)``", re.DOTALL)
_TICK = re.compile(r"`([^`]+)`")
_RULE = re.compile(r"^=+( +=+)+$")
_ESCAPE = str.maketrans({"*": r"\*", "_": r"\_", "[": r"\[", "]": r"\]", "<": "&lt;", "\\": "\\\\"})
_CELL_ESCAPE = str.maketrans({**{chr(k): v for k, v in _ESCAPE.items()}, "|": r"\|"})


def _span(code: str) -> str:
    """``code`` as one Markdown code span (line breaks become spaces)."""
    code = " ".join(code.split())
    fence = "``" if "`" in code else "`"
    return f"{fence}{code}{fence}" if fence == "`" else f"{fence} {code} {fence}"


def inline(text: str, *, cell: bool = False) -> str:
    """Inline RST (code, roles, interpreted text) as Markdown code spans; everything else escaped so
    that it renders literally, except a list marker (``* `` or ``- ``) that starts a line. With
    ``cell``, the text goes into a table cell: pipes outside code are escaped too (inside a code
    span Python-Markdown's tables never split) and line breaks become spaces."""
    spans: list[str] = []

    def hold(match: re.Match[str]) -> str:
        spans.append(_span(match.group(1)))
        return f"\x00{len(spans) - 1}\x00"

    text = _CODE.sub(hold, _ROLE.sub(lambda m: f"``{m.group(1)}``", text))
    text = _TICK.sub(hold, text)
    table = _CELL_ESCAPE if cell else _ESCAPE
    lines = []
    for line in text.split("\n"):
        marker = None if cell else re.match(r"\s*[*-] ", line)
        head = marker.group(0) if marker else ""
        lines.append(head + line[len(head) :].translate(table))
    if cell:
        lines = [" ".join(" ".join(lines).split())]
    return re.sub("\x00(\\d+)\x00", lambda m: spans[int(m.group(1))], "\n".join(lines))


def _fenced(block: list[str]) -> list[str]:
    while block and not block[-1].strip():
        block.pop()
    return ["```text", *block, "```", ""]


def docstring_markdown(doc: str) -> str:
    """A module or class docstring as Markdown: paragraphs and lists through :func:`inline`, indented
    literal blocks (equations) and RST simple tables as fenced ``text`` blocks, ``::`` as ``:``."""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            text = "\n".join(paragraph).rstrip()
            text = text[:-3].rstrip() if text.endswith(" ::") or text == "::" else re.sub("::$", ":", text)
            out.extend([inline(text), ""])
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if _RULE.match(line):
            flush()
            block, rules = [], 0
            while i < len(lines) and rules < 3:
                rules += bool(_RULE.match(lines[i]))
                block.append(lines[i])
                i += 1
            out.extend(_fenced(block))
        elif line.startswith("    ") and not paragraph:
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
            out.extend(_fenced(block))
        elif not line.strip():
            flush()
            i += 1
        else:
            paragraph.append(line)
            i += 1
    flush()
    return "\n".join(out).strip() + "\n"


def states_equation(markdown: str) -> bool:
    """Whether ``markdown`` (from :func:`docstring_markdown`) holds an equation: a literal block or a
    code span with ``=`` in it."""
    blocks = re.findall(r"```text\n(.*?)```", markdown, re.DOTALL)
    spans = re.findall(r"`([^`]+)`", re.sub(r"```text\n.*?```", "", markdown, flags=re.DOTALL))
    return any("=" in b for b in blocks) or any("=" in s for s in spans)


def family_contracts() -> dict[str, str]:
    """``{family: contract}`` from the RST table of :mod:`attnzoo.families`' docstring, each contract
    as inline Markdown (its continuation lines joined)."""
    lines = inspect.cleandoc(families.__doc__ or "").splitlines()
    rules = [i for i, line in enumerate(lines) if _RULE.match(line)]
    if len(rules) < 3:
        raise DocsiteError("attnzoo.families' docstring lacks its family/contract table")
    width = lines[rules[0]].index(" ")
    start = len(lines[rules[0]]) - len(lines[rules[0]][width:].lstrip())
    contracts: dict[str, list[str]] = {}
    current = None
    for line in lines[rules[1] + 1 : rules[2]]:
        name = line[:start].strip()
        if name:
            current = name
            contracts[current] = []
        if current is None:
            raise DocsiteError(f"attnzoo.families' contract table starts with a continuation line: {line!r}")
        contracts[current].append(line[start:].strip())
    return {name: inline(" ".join(parts)) for name, parts in contracts.items()}
