"""The README's export table is the one generated from the cards, and says what the cards say."""

from __future__ import annotations

from pathlib import Path

import attnzoo
from attnzoo.docs import EXPORT_END, EXPORT_START, export_table
from attnzoo.integrations.export import fixed_size_reason, skip_reason

README = Path(__file__).resolve().parents[1] / "README.md"


def _rows() -> dict[str, list[str]]:
    lines = export_table().splitlines()
    assert lines[0] == "| name | torch.export | dynamic axes | ONNX (onnxruntime) |"
    rows = (line.removeprefix("| ").removesuffix(" |").split(" | ") for line in lines[2:])
    return {cells[0].strip("`"): cells[1:] for cells in rows}


def test_readme_export_table_is_current() -> None:
    text = README.read_text()
    body = text.split(EXPORT_START, 1)[1].split(EXPORT_END, 1)[0]
    assert body.strip() == export_table(), "README export table is stale: run `attnzoo readme`"


def test_export_table_follows_the_cards() -> None:
    rows = _rows()
    assert sorted(rows) == attnzoo.list_mechanisms()
    for name, (program, axes, onnx) in rows.items():
        card = attnzoo.card(name)
        declared = skip_reason(card, "export")
        assert program == (f"no: {declared}" if declared else "yes"), name
        if skip_reason(card, "onnx") and not declared:
            assert onnx == f"no: {skip_reason(card, 'onnx')}", name
        assert onnx.startswith("no") == bool(declared or skip_reason(card, "onnx")), name
        assert axes.startswith("–" if declared else "batch"), name
        reason = fixed_size_reason(card)
        assert (reason is not None and reason in axes) or (reason is None and "sizes fixed" not in axes), name


def test_export_table_names_the_dynamic_axes() -> None:
    rows = _rows()
    assert rows["mhsa"][1] == "batch, N"
    assert rows["oat_cross_attention"][1] == "batch, N, M"
    assert rows["se"][1] == "batch, H, W"
    assert rows["attention_gate"][1] == "batch, H, W, g H, g W"
    assert rows["biformer_bra"][1].startswith("batch (`size=(H, W)`")
    assert rows["ninformer_gating"][1] == "batch (sizes fixed: the module is built for one input size)"
