"""Neighborhood attention modules: equations in float64, NAT/NATTEN checkpoint layout, natten oracle."""

from __future__ import annotations

import warnings

import pytest
import torch

import attnzoo
from attnzoo.kernels.neighborhood import neighborhood_attention_reference, neighborhood_mask
from attnzoo.mechanisms.token_mixer.neighborhood_attention import (
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
)

F64 = torch.float64


def _manual(module: torch.nn.Module, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """qkv -> naive explicit-index NA (+ rpb) -> proj, written out."""
    b, n, c = x.shape
    h = module.num_heads
    qkv = module.qkv(x).reshape(b, *size, 3, h, c // h)
    q, k, v = (qkv.select(-3, i).movedim(-2, 1) for i in range(3))
    out = neighborhood_attention_reference(
        q, k, v, module.kernel_size, module.dilation, module.causal, module.rpb, scale=(c // h) ** -0.5
    )
    return module.proj(out.movedim(1, -2).reshape(b, n, c))


@pytest.mark.parametrize(
    ("kernel", "dilation", "size"), [(3, 1, (5, 7)), ((3, 5), (2, 1), (7, 6)), (5, 2, (10, 11))]
)
def test_2d_matches_equations(
    kernel: int | tuple[int, int], dilation: int | tuple[int, int], size: tuple
) -> None:
    module = NeighborhoodAttention2D(12, 3, kernel, dilation).to(F64)
    x = torch.randn(2, size[0] * size[1], 12, dtype=F64)
    torch.testing.assert_close(module(x, size=size), _manual(module, x, size))


@pytest.mark.parametrize("causal", [False, True])
def test_1d_matches_equations(causal: bool) -> None:
    module = NeighborhoodAttention1D(8, 2, kernel_size=4, dilation=2, causal=causal).to(F64)
    x = torch.randn(3, 11, 8, dtype=F64)
    torch.testing.assert_close(module(x), _manual(module, x, (11,)))


def test_capture_shows_the_neighbourhood() -> None:
    module = NeighborhoodAttention2D(8, 2, 3).to(F64)
    x = torch.randn(1, 30, 8, dtype=F64)
    with attnzoo.capture(module) as cap:
        module(x, size=(5, 6))
    (rec,) = cap[""]
    assert rec.kind == "neighborhood"
    assert (rec.probs[0, :, ~neighborhood_mask((5, 6), 3)] == 0).all()


def test_parameters_use_the_nat_layout() -> None:
    module = NeighborhoodAttention2D(16, 4, kernel_size=(3, 5))
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "qkv.weight": (48, 16),
        "qkv.bias": (48,),
        "rpb": (4, 5, 9),
        "proj.weight": (16, 16),
        "proj.bias": (16,),
    }
    no_bias = NeighborhoodAttention1D(16, 4, kernel_size=5, rel_pos_bias=False)
    assert "rpb" not in no_bias.state_dict()


def test_bad_configuration_and_inputs() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        NeighborhoodAttention1D(10, 3)
    with pytest.raises(TypeError, match="kernel_size"):
        NeighborhoodAttention2D(8, 2, kernel_size=(3, 3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dilation"):
        NeighborhoodAttention1D(8, 2, dilation=0)
    module = NeighborhoodAttention2D(8, 2, kernel_size=3, dilation=2)
    with pytest.raises(ValueError, match="too small"):
        module(torch.randn(1, 5 * 7, 8), size=(5, 7))
    with pytest.raises(ValueError, match="size"):
        module(torch.randn(1, 36, 8))


@pytest.mark.oracle
@pytest.mark.parametrize(
    ("kernel", "dilation", "size"), [(3, 1, (5, 7)), (7, 1, (12, 9)), ((3, 5), (3, 2), (10, 11))]
)
def test_2d_loads_natten_module_and_matches(
    kernel: int | tuple[int, int], dilation: int | tuple[int, int], size: tuple
) -> None:
    natten = pytest.importorskip("natten")
    official = natten.NeighborhoodAttention2D(32, 4, kernel_size=kernel, dilation=dilation)
    ours = NeighborhoodAttention2D(32, 4, kernel, dilation, rel_pos_bias=False)
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, *size, 32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        expected = official(x)
        got = ours(x.reshape(2, -1, 32), size=size).reshape(2, *size, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.oracle
@pytest.mark.parametrize("causal", [False, True])
def test_1d_loads_natten_module_and_matches(causal: bool) -> None:
    natten = pytest.importorskip("natten")
    official = natten.NeighborhoodAttention1D(16, 2, kernel_size=5, dilation=2, is_causal=causal)
    ours = NeighborhoodAttention1D(16, 2, 5, 2, causal=causal, rel_pos_bias=False)
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 13, 16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        expected = official(x)
        got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
