"""Where commands write: a fresh run folder by default, an explicit folder only when asked.

Committed results under ``reports/`` are the project's claims, so a command never overwrites them
unless the user names the folder (``--out``). Then :func:`replace_outputs` removes the files of a
previous write that this write no longer produces, so a report never mixes two runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

__all__ = ["new_run_dir", "replace_outputs"]


def new_run_dir(root: Path | str) -> Path:
    """Create and return a folder under ``root`` that did not exist, named after the UTC time
    (``20261207-061500``, then ``...-1``, ``...-2`` for runs started in the same second)."""
    root = Path(root)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path
    raise OSError(f"no free run folder under {root} for {stamp}")


def replace_outputs(out_dir: Path | str, written: Iterable[Path], produced: Iterable[str]) -> list[Path]:
    """Delete the files of ``out_dir`` named in ``produced`` (every file name the command can write)
    that are not in ``written`` (what it wrote this time); returns the deleted paths. Other files in
    the folder are left alone."""
    out_dir = Path(out_dir)
    keep = {Path(p).resolve() for p in written}
    removed = []
    for name in produced:
        path = out_dir / name
        if path.is_file() and path.resolve() not in keep:
            path.unlink()
            removed.append(path)
    return removed
