"""The export API (attnzoo.integrations.export): dynamic dimensions, files, errors.

Every mechanism's program and ONNX model are checked against eager in ``tests/test_conformance.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

import attnzoo
from attnzoo.checks import tracing
from attnzoo.inputs import Example, example_inputs
from attnzoo.integrations import IntegrationError
from attnzoo.integrations.export import (
    contract_axes,
    dynamic_axes,
    dynamic_dims,
    export_onnx,
    export_program,
    fixed_size_reason,
    run_onnx,
)


def _mhsa() -> nn.Module:
    torch.manual_seed(0)
    return attnzoo.create("mhsa", dim=8, num_heads=2).eval()


def test_program_takes_other_batches_and_lengths() -> None:
    module = _mhsa()
    program = export_program(module)  # default example: batch 2, N = 7
    x = torch.randn(3, 19, 8)
    torch.testing.assert_close(program.module()(x), module(x), atol=1e-6, rtol=1e-6)


def test_static_program_rejects_another_shape() -> None:
    module = _mhsa()
    program = export_program(module, dynamic=False)
    with pytest.raises(AssertionError, match="Guard failed"):
        program.module()(torch.randn(3, 7, 8))


def test_dynamic_dims_per_family() -> None:
    mhsa = _mhsa()
    assert dynamic_dims(mhsa) == {"x": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}}
    assert dynamic_dims(mhsa, example_inputs(mhsa, batch=1)) == {"x": {1: Dim.DYNAMIC}}  # size 1 stays
    region = attnzoo.create("region_attention", **attnzoo.card("region_attention").tiny)
    assert dynamic_dims(region) == {
        "x": {0: Dim.DYNAMIC},
        "size": (None, None),
        "extra": {"region_map": {0: Dim.DYNAMIC}},
    }
    gate = attnzoo.create("attention_gate", **attnzoo.card("attention_gate").tiny)
    assert dynamic_axes(gate) == {"x": {2: "H", 3: "W"}, "g": {2: "g H", 3: "g W"}}


def test_card_fixes_sizes_with_its_reason() -> None:
    based = attnzoo.create("based", **attnzoo.card("based").tiny)
    assert contract_axes(based) == {"x": {1: "N"}}
    assert dynamic_axes(based) == {}
    assert "chunk" in fixed_size_reason(attnzoo.card("based"))
    with pytest.raises(IntegrationError, match=r"'based' \(its card declares: the chunked"):
        export_program(based.eval(), dynamic=contract_axes(based))


def test_explicit_axes() -> None:
    module = _mhsa()
    program = export_program(module, dynamic={"x": {1: "N"}})
    x = torch.randn(2, 11, 8)
    torch.testing.assert_close(program.module()(x), module(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(IntegrationError, match="'context'"):
        export_program(module, dynamic={"context": {1: "M"}})
    with pytest.raises(IntegrationError, match="axes >= 1"):
        export_program(module, dynamic={"x": {0: "B"}})
    with pytest.raises(TypeError, match="dynamic"):
        export_program(module, dynamic="x")  # type: ignore[arg-type]


def test_keyword_inputs_through_kwargs() -> None:
    torch.manual_seed(0)
    module = attnzoo.create("aw_moe_gate", **attnzoo.card("aw_moe_gate").tiny).eval()
    program = export_program(module)
    ex = example_inputs(module, batch=3, size=(12,))
    got = program.module(check_guards=False)(*ex.args, **ex.kwargs)
    for a, b in zip(got, module(*ex.args, **ex.kwargs), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_value_checks_are_skipped_while_tracing() -> None:
    seen: list[bool] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tracing())
            return x + 1

    torch.export.export(Probe(), (torch.randn(2),))
    assert seen == [True] and not tracing()
    x = torch.randn(2, 7, 8)
    x[0, 0, 0] = float("nan")
    torch.export.export(_mhsa(), (x,))  # the NaN check does not run in the traced graph
    with pytest.raises(IntegrationError, match=r"mhsa.*NaN"):  # but export_program checks the example
        export_program(_mhsa(), Example((x,)))


def test_bad_module_and_example() -> None:
    with pytest.raises(TypeError, match="module must be"):
        export_program("mhsa")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no card"):
        export_program(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="example must be"):
        export_program(_mhsa(), (torch.randn(2, 7, 8),))  # type: ignore[arg-type]
    with pytest.raises(IntegrationError, match=r"'mhsa'.*channels"):
        export_program(_mhsa(), Example((torch.randn(2, 7, 5),)))
    with pytest.raises(TypeError, match="'mhsa'"):
        export_program(_mhsa(), Example((torch.randn(2, 7, 8),), {"region_map": torch.ones(2, 7)}))


def test_onnx_file_runs_other_shapes(tmp_path: Path) -> None:
    module = _mhsa()
    path = export_onnx(module, tmp_path / "mhsa.onnx")
    assert path == tmp_path / "mhsa.onnx" and path.stat().st_size > 0
    assert all(p.requires_grad for p in module.parameters())  # restored after tracing
    ex = Example((torch.randn(5, 13, 8),))
    (out,) = run_onnx(path, ex)
    torch.testing.assert_close(torch.from_numpy(out), module(*ex.args).detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(IntegrationError, match="takes 1"):
        run_onnx(path, Example((ex.args[0], ex.args[0])))


def test_onnx_bad_paths(tmp_path: Path) -> None:
    module = _mhsa()
    with pytest.raises(IntegrationError, match=r"\.onnx"):
        export_onnx(module, tmp_path / "mhsa.bin")
    with pytest.raises(IntegrationError, match="folder"):
        export_onnx(module, tmp_path / "missing" / "mhsa.onnx")
    with pytest.raises(IntegrationError, match="not a file"):
        run_onnx(tmp_path / "none.onnx", example_inputs(module))
    with pytest.raises(TypeError, match="example must be"):
        run_onnx(tmp_path / "none.onnx", torch.randn(2, 7, 8))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["attention_mil", "acmil"])
def test_pooling_exports_with_a_padding_mask(name: str) -> None:
    torch.manual_seed(0)
    module = attnzoo.create(name, **attnzoo.card(name).tiny).eval()
    x = torch.randn(2, 7, module.dim)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    program = export_program(module, Example((x,), {"mask": mask}))
    x2, mask2 = torch.randn(3, 9, module.dim), torch.ones(3, 9, dtype=torch.bool)
    mask2[1, 2:] = False
    for xs, ms in ((x, mask), (x2, mask2)):
        got, want = program.module()(xs, mask=ms), module(xs, mask=ms)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert float(got.attention[1, ..., 2:].detach().abs().max()) == 0.0
