"""Reading the parity fixtures under ``shared/parity`` (format: that folder's README).

The fixture root is ``$ATTNZOO_PARITY_DIR`` if set, else ``../shared/parity`` beside the
repository checkout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

__all__ = ["FixtureCase", "fixture_cases", "fixture_names", "parity_root", "run_case"]


def parity_root() -> Path:
    """Folder that holds one sub-folder per official mechanism."""
    env = os.environ.get("ATTNZOO_PARITY_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "parity"


def fixture_names(root: Path | None = None) -> list[str]:
    """Names of the fixture folders (those with a ``meta.json``)."""
    root = parity_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())


@dataclass
class FixtureCase:
    """One case of a fixture folder, tensors loaded."""

    mechanism: str
    file: str
    constructor: dict[str, Any]
    forward: dict[str, Any]
    symbol: str | None
    inputs: dict[str, torch.Tensor]
    outputs: list[torch.Tensor]
    output_names: list[str]
    params: dict[str, torch.Tensor]
    atol: float
    rtol: float
    meta: dict[str, Any]


def fixture_cases(name: str, root: Path | None = None) -> list[FixtureCase]:
    """Every case of fixture folder ``name``."""
    folder = (parity_root() if root is None else root) / name
    meta = json.loads((folder / "meta.json").read_text())
    cases = []
    for case in meta["cases"]:
        tensors = load_file(str(folder / case["file"]))
        cases.append(
            FixtureCase(
                mechanism=name,
                file=case["file"],
                constructor=dict(case.get("constructor", {})),
                forward=dict(case.get("forward", {})),
                symbol=case.get("symbol"),
                inputs={n: tensors[f"input.{n}"] for n in case["inputs"] if f"input.{n}" in tensors},
                outputs=[tensors[f"output.{n}"] for n in case["outputs"]],
                output_names=list(case["outputs"]),
                params={k[len("param.") :]: v for k, v in tensors.items() if k.startswith("param.")},
                atol=float(case["atol"]),
                rtol=float(case["rtol"]),
                meta=case,
            )
        )
    return cases


def run_case(case: FixtureCase) -> tuple[torch.Tensor, ...]:
    """Load ``case`` through :func:`attnzoo.official.load` and run it (no grad).

    Tensor inputs take precedence over a forward kwarg of the same name (some fixtures list a
    tensor argument in both, the ``forward`` entry only describing it)."""
    from attnzoo import official

    run = official.load(case.mechanism, case.constructor, case.params, symbol=case.symbol)
    with torch.no_grad():
        out = run(**{**case.forward, **case.inputs})
    if len(out) != len(case.outputs):
        raise ValueError(
            f"{case.mechanism}/{case.file}: got {len(out)} outputs, expected {len(case.outputs)}"
        )
    return out
