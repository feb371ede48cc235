"""An input whose dtype differs from the module's parameters gets an attnzoo error naming both dtypes
(issue 20 part 2), for every registered mechanism; autocast, which casts inside the ops, is allowed."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.inputs import example_inputs


@pytest.mark.parametrize("name", attnzoo.list_mechanisms())
def test_input_dtype_differing_from_parameters_is_refused(name: str) -> None:
    module = attnzoo.create(name, **attnzoo.card(name).tiny).eval()
    ex = example_inputs(module, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"dtype torch\.float64 .*parameters are torch\.float32"):
        module(*ex.args, **ex.kwargs)
    module = module.double()
    out = module(*ex.args, **ex.kwargs)
    first = out if isinstance(out, torch.Tensor) else out[0]
    assert first.dtype == torch.float64


def test_error_says_how_to_convert() -> None:
    attn = attnzoo.create("mhsa", dim=8, num_heads=2)
    with pytest.raises(TypeError, match=r"x\.to\(torch\.float32\).*module\.to\(torch\.float64\)"):
        attn(torch.randn(1, 4, 8, dtype=torch.float64))


def test_autocast_inputs_pass() -> None:
    attn = attnzoo.create("mhsa", dim=8, num_heads=2).eval()
    x = torch.randn(1, 4, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attn(x).shape == (1, 4, 8)
