"""Input checks and layout conversions."""

from __future__ import annotations

import pytest
import torch

from attnzoo import layout
from attnzoo.checks import (
    check_bool,
    check_divisible,
    check_float,
    check_int,
    check_rate,
    check_size,
    check_tensor,
    set_finite_check,
)


def test_check_tensor_errors_name_the_argument() -> None:
    with pytest.raises(TypeError, match=r"foo must be a torch\.Tensor"):
        check_tensor([1.0], "foo")
    with pytest.raises(ValueError, match="foo must have 3 dimensions"):
        check_tensor(torch.zeros(2, 2), "foo", ndim=3)
    with pytest.raises(TypeError, match="foo must be a floating-point"):
        check_tensor(torch.zeros(2, dtype=torch.long), "foo")
    with pytest.raises(ValueError, match="foo must not be empty"):
        check_tensor(torch.zeros(0, 3), "foo")
    with pytest.raises(ValueError, match="foo contains NaN"):
        check_tensor(torch.tensor([1.0, float("nan")]), "foo")
    with pytest.raises(ValueError, match="dimension 1"):
        check_tensor(torch.zeros(2, 3), "foo", shape=(2, 4))


def test_finite_check_can_be_disabled() -> None:
    set_finite_check(False)
    try:
        check_tensor(torch.tensor([float("inf")]), "foo")
    finally:
        set_finite_check(True)


def test_check_size() -> None:
    assert check_size((2, 3), 6, spatial_dims=2) == (2, 3)
    with pytest.raises(ValueError, match="N=7"):
        check_size((2, 3), 7, spatial_dims=2)
    with pytest.raises(ValueError, match="size is required"):
        check_size(None, 6, spatial_dims=2)
    with pytest.raises(TypeError, match="size must be a tuple"):
        check_size("23", 6, spatial_dims=2)
    with pytest.raises(ValueError, match="2 entries"):
        check_size((6,), 6, spatial_dims=2)


def test_check_divisible() -> None:
    check_divisible(8, 2, "dim", "num_heads")
    with pytest.raises(ValueError, match="num_heads=3 must divide dim=8"):
        check_divisible(8, 3, "dim", "num_heads")
    with pytest.raises(TypeError, match="dim must be an int"):
        check_divisible("8", 2, "dim", "num_heads")
    with pytest.raises(ValueError, match="num_heads must be positive"):
        check_divisible(8, 0, "dim", "num_heads")


def test_check_int() -> None:
    assert check_int(3, "n") == 3
    assert check_int(0, "n", minimum=0) == 0
    for bad in ("3", 3.0, True):
        with pytest.raises(TypeError, match="n must be an int"):
            check_int(bad, "n")
    with pytest.raises(ValueError, match="n must be positive, got 0"):
        check_int(0, "n")
    with pytest.raises(ValueError, match="n must be >= 2, got 1"):
        check_int(1, "n", minimum=2)


def test_check_bool_float_rate() -> None:
    assert check_bool(False, "flag") is False
    assert check_rate(0, "p") == 0.0
    assert check_float(2, "x", positive=True) == 2.0
    with pytest.raises(ValueError, match="x must be positive"):
        check_float(0.0, "x", positive=True)
    with pytest.raises(ValueError, match="x must be >= 1"):
        check_float(0.5, "x", minimum=1.0)
    with pytest.raises(ValueError, match="x must be finite"):
        check_float(float("inf"), "x")
    with pytest.raises(TypeError, match="flag must be a bool"):
        check_bool(0, "flag")
    with pytest.raises(TypeError, match="p must be a float"):
        check_rate(True, "p")
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        check_rate(float("nan"), "p")


def test_layout_round_trips() -> None:
    x = torch.randn(2, 3, 4, 5)  # B C H W
    bnc = layout.bchw_to_bnc(x)
    assert bnc.shape == (2, 20, 3)
    assert torch.equal(layout.bnc_to_bchw(bnc, (4, 5)), x)
    bhwc = layout.bchw_to_bhwc(x)
    assert torch.equal(layout.bhwc_to_bchw(bhwc), x)
    assert torch.equal(layout.bhwc_to_bnc(bhwc), bnc)
    assert torch.equal(layout.bnc_to_bhwc(bnc, (4, 5)), bhwc)
    with pytest.raises(ValueError, match="size"):
        layout.bnc_to_bchw(bnc, (4, 4))
