"""kernels.fusemax: the 1-, 2- and 3-pass cascades equal softmax attention (attnzoo.kernels.attention)
in float64 for every tile size, ragged last tiles, causal and boolean masks, with equal gradients; the
cost model matches hand counts, the FLOP counter and the number of key walks the kernels make."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import attnzoo
import attnzoo.kernels.fusemax as fm
from attnzoo.kernels import attention
from attnzoo.kernels.fusemax import PASSES, bench_cost_model, cascade_attention, cascade_cost

B, H, D, DV = 2, 3, 4, 5


def _qkv(nq: int, nk: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, H, nq, D, generator=g, dtype=torch.float64),
        torch.randn(B, H, nk, D, generator=g, dtype=torch.float64),
        torch.randn(B, H, nk, DV, generator=g, dtype=torch.float64),
    )


def _mask(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    """A random bool ``(.., N_q, N_k)`` mask that keeps each query's causal diagonal key and the last
    key (so no row is empty, causal or not); early tiles are often empty for a row, which the
    running max must pass through."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < 0.3
    nq, nk = shape[-2:]
    mask[..., torch.arange(nq), torch.arange(nq) + nk - nq] = True
    mask[..., -1] = True
    return mask


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("nq", "nk"), [(7, 7), (5, 9)])
def test_every_tile_size_equals_attention(passes: int, causal: bool, nq: int, nk: int) -> None:
    q, k, v = _qkv(nq, nk)
    want = attention(q, k, v, causal=causal)
    for tile in range(1, nk + 2):  # 1..M, and one tile larger than M
        got = cascade_attention(q, k, v, passes=passes, tile=tile, causal=causal)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"tile={tile}")


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("shape", [(B, H, 6, 8), (B, 1, 6, 8), (6, 8)])
@pytest.mark.parametrize("causal", [False, True])
def test_bool_mask_equals_attention(passes: int, shape: tuple[int, ...], causal: bool) -> None:
    q, k, v = _qkv(6, 8)
    mask = _mask(shape)
    want = attention(q, k, v, mask=mask, causal=causal)
    for tile in (1, 3, 8):
        got = cascade_attention(q, k, v, passes=passes, tile=tile, mask=mask, causal=causal)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("passes", PASSES)
def test_scale_and_empty_row(passes: int) -> None:
    q, k, v = _qkv(4, 6)
    torch.testing.assert_close(
        cascade_attention(q, k, v, passes=passes, tile=4, scale=0.3), attention(q, k, v, scale=0.3)
    )
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2] = False
    out = cascade_attention(q, k, v, passes=passes, tile=4, mask=mask)
    assert out[:, :, 2].isnan().all()  # undefined, as in attnzoo.kernels.attention
    torch.testing.assert_close(out[:, :, [0, 1, 3]], attention(q, k, v)[:, :, [0, 1, 3]])


@pytest.mark.parametrize("passes", PASSES)
def test_gradients_equal_attention(passes: int) -> None:
    mask = _mask((B, 1, 5, 7), seed=3)
    inputs = [t.requires_grad_() for t in _qkv(5, 7, seed=2)]
    got = torch.autograd.grad(
        (cascade_attention(*inputs, passes=passes, tile=3, mask=mask, causal=True) ** 2).sum(), inputs
    )
    want = torch.autograd.grad((attention(*inputs, mask=mask, causal=True) ** 2).sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    small = [t.detach()[:1, :1].requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(lambda a, b, c: cascade_attention(a, b, c, passes=passes, tile=2), small)


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"tile": 0}, ValueError, "tile"),
        ({"tile": 2.0}, TypeError, "tile"),
        ({"passes": 4}, ValueError, "passes"),
        ({"causal": 1}, TypeError, "causal"),
        ({"mask": torch.ones(3, 6)}, TypeError, "mask"),
        ({"mask": torch.ones(3, 5, dtype=torch.bool)}, ValueError, "mask"),
        ({"scale": float("nan")}, ValueError, "scale"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, error: type[Exception], needle: str) -> None:
    q, k, v = _qkv(3, 6)
    with pytest.raises(error, match=needle):
        cascade_attention(q, k, v, **kwargs)
    with pytest.raises(ValueError, match="k"):
        cascade_attention(q, k[..., :3], v)


def test_cost_model_hand_counts() -> None:
    # P = M = 4, E = F = 2, M0 = P0 = 2 (T = 2 query tiles), 4-byte elements:
    # traffic = 4 (P E + P F + T (passes M E + M F)) = 4 (8 + 8 + 2 (8 passes + 8))
    # buffer = 4 (P0 E + M0 (E + F) + P0 F + 2 P0 + P0 M0) = 4 (4 + 8 + 4 + 4 + 4) = 96
    # single-read buffer, passes > 1: the P0 x M fiber, 4 (20 + 8) = 112
    # FLOPs = passes 2 P M E + 2 P M F = 64 passes + 64
    for passes, traffic, single in ((1, 192, 96), (2, 256, 112), (3, 320, 112)):
        cost = cascade_cost(passes, 4, 2, tile=2)
        assert (cost.passes, cost.key_reads) == (passes, 2 * passes)
        assert (cost.traffic_bytes, cost.buffer_bytes, cost.single_read_buffer_bytes) == (traffic, 96, single)
        assert cost.flops == 64 * passes + 64


def test_cost_model_ragged_hand_count() -> None:
    # P = 5, M = 3, E = 2, F = 1, M0 = 2, P0 = 3 (T = 2), 6 problems of 2-byte elements, 2 passes:
    # traffic per problem 5*2 + 5*1 + 2 (2*3*2 + 3*1) = 45 elements; state 3*2 + 2*3 + 3*1 + 2*3 = 21
    cost = cascade_cost(2, 5, 2, tile=2, n_k=3, d_v=1, query_tile=3, batch=2, heads=3, bytes_per_element=2)
    assert cost.traffic_bytes == 6 * 2 * 45
    assert cost.buffer_bytes == 2 * (21 + 3 * 2)
    assert cost.single_read_buffer_bytes == 2 * (21 + 3 * 3)
    assert cost.flops == 6 * (2 * 2 * 5 * 3 * 2 + 2 * 5 * 3 * 1)
    assert cost.key_reads == 4
    # a key tile larger than M holds M keys
    assert cascade_cost(1, 5, 2, tile=9, n_k=3, query_tile=3) == cascade_cost(
        1, 5, 2, tile=3, n_k=3, query_tile=3
    )


def test_only_multi_pass_single_read_buffer_grows_with_n() -> None:
    short, long = (cascade_cost(3, n, 16, tile=8) for n in (64, 1024))
    assert long.single_read_buffer_bytes > short.single_read_buffer_bytes
    assert long.buffer_bytes == short.buffer_bytes
    one = [cascade_cost(1, n, 16, tile=8) for n in (64, 1024)]
    assert one[0].single_read_buffer_bytes == one[1].single_read_buffer_bytes == one[0].buffer_bytes


@pytest.mark.parametrize("passes", PASSES)
def test_passes_are_the_kernels_key_walks(passes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    walks = []
    tiles = fm._tiles

    def counting(*args: object) -> object:
        walks.append(1)
        return tiles(*args)

    monkeypatch.setattr(fm, "_tiles", counting)
    cascade_attention(*_qkv(5, 7), passes=passes, tile=3)
    assert len(walks) == cascade_cost(passes, 5, D, tile=3, n_k=7).passes == passes


@pytest.mark.parametrize("passes", PASSES)
def test_model_flops_equal_flop_counter(passes: int) -> None:
    # ragged tiles of 4, 4, 2 keys (a 1-key tile's einsum is a broadcast product the counter skips)
    q, k, v = _qkv(7, 10)
    with FlopCounterMode(display=False) as counter:
        cascade_attention(q, k, v, passes=passes, tile=4, causal=True)
    cost = cascade_cost(passes, 7, D, tile=4, n_k=10, d_v=DV, batch=B, heads=H)
    assert counter.get_total_flops() == cost.flops


@pytest.mark.parametrize("passes", PASSES)
def test_bench_cost_model_flops_equal_the_module(passes: int) -> None:
    config = {"dim": 16, "num_heads": 2, "tile": 4, "passes": passes}
    module = attnzoo.create("fusemax_attention", **config)
    x = torch.randn(3, 11, 16)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    values = bench_cost_model(config, 11, 3)
    assert values["model FLOPs"] == counter.get_total_flops()
    assert values["passes"] == passes
    assert values["3-pass traffic (B)"] >= values["model traffic (B)"]
