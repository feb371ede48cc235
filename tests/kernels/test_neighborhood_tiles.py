"""The chunked tiled NA kernel (attnzoo.kernels._na_tiles) and its custom backward: random shape sweeps
in the style of NATTEN's tests against the float64 reference (fp32 tolerances), gradcheck in float64,
several tile and chunk sizes, dilation, causal, bias, 1-3 spatial axes; bounded working memory."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnzoo.kernels import _na_tiles
from attnzoo.kernels.neighborhood import (
    na1d,
    na2d,
    na3d,
    neighborhood_attention,
    neighborhood_attention_reference,
)

F64 = torch.float64


def _random_case(rng: random.Random, nd: int) -> dict:
    """A random valid NA problem: per axis a length, a window, a dilation with k * d <= L, causal."""
    sizes, ks, dil, causal, tile = [], [], [], [], []
    for _ in range(nd):
        k = rng.randint(1, 7 if nd > 1 else 17)
        d = rng.randint(1, 3)
        sizes.append(rng.randint(k * d, k * d + (9 if nd > 1 else 40)))
        ks.append(k)
        dil.append(d)
        causal.append(rng.random() < 0.3)
        tile.append(rng.choice([1, 2, 3, 5, 8, 64]))
    return {
        "size": tuple(sizes),
        "ks": tuple(ks),
        "dil": tuple(dil),
        "causal": tuple(causal),
        "tile": tuple(tile),
    }


SWEEP = [(nd, seed) for nd in (1, 2, 3) for seed in range(8 if nd < 3 else 4)]


@pytest.mark.parametrize(("nd", "seed"), SWEEP)
def test_random_shapes_match_float64_reference(nd: int, seed: int) -> None:
    rng = random.Random(1000 * nd + seed)
    case = _random_case(rng, nd)
    heads, d = rng.randint(1, 3), rng.choice([4, 8])
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, heads, *case["size"], d, generator=g) for _ in range(3))
    rpb = torch.randn(heads, *(2 * kk - 1 for kk in case["ks"]), generator=g) if seed % 2 else None
    args = (case["ks"], case["dil"], case["causal"])
    for x in (q, k, v) + ((rpb,) if rpb is not None else ()):
        x.requires_grad_()
    out = neighborhood_attention(q, k, v, *args, rpb, tile_size=case["tile"])
    leaves = [q, k, v] + ([rpb] if rpb is not None else [])
    ref_leaves = [x.detach().to(F64).requires_grad_() for x in leaves]
    ref_rpb = ref_leaves[3] if rpb is not None else None
    ref = neighborhood_attention_reference(*ref_leaves[:3], *args, ref_rpb)
    torch.testing.assert_close(out, ref.float(), atol=2e-5, rtol=1e-4)
    grad = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.to(F64))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b.float(), atol=1e-4, rtol=1e-4)


GRADCHECK = [
    # (size, kernel, dilation, causal, tile)
    ((9,), 3, 1, False, 2),
    ((11,), 4, 2, True, 3),
    ((10,), 5, 2, False, 64),
    ((5, 6), 3, (1, 2), (False, True), (2, 3)),
    ((6, 5), (3, 2), 1, False, (4, 8)),
    ((4, 5, 4), (3, 2, 3), (1, 2, 1), (True, False, False), (2, 2, 3)),
]


@pytest.mark.parametrize(("size", "kernel", "dilation", "causal", "tile"), GRADCHECK)
@pytest.mark.parametrize("with_rpb", [False, True])
def test_gradcheck_float64(size: tuple, kernel, dilation, causal, tile, with_rpb: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, *size, 3, dtype=F64, generator=g).requires_grad_() for _ in range(3))
    ks = (kernel,) * len(size) if isinstance(kernel, int) else kernel
    inputs = [q, k, v]
    if with_rpb:
        inputs.append(torch.randn(2, *(2 * kk - 1 for kk in ks), dtype=F64, generator=g).requires_grad_())

    def fn(*t: torch.Tensor) -> torch.Tensor:
        rpb = t[3] if with_rpb else None
        return neighborhood_attention(t[0], t[1], t[2], kernel, dilation, causal, rpb, tile_size=tile)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("chunk", [1, 97, 1 << 22])
def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """A chunk of one tile, chunks that do not divide the tiles, and one chunk give the same function."""
    monkeypatch.setattr(_na_tiles, "CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 37, 4, dtype=F64, generator=g).requires_grad_() for _ in range(3))
    rpb = torch.randn(2, 9, dtype=F64, generator=g).requires_grad_()
    out = na1d(q, k, v, 5, 2, False, rpb, tile_size=4)
    ref = neighborhood_attention_reference(q, k, v, 5, 2, False, rpb)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(out.shape, dtype=F64, generator=g)
    for a, b in zip(
        torch.autograd.grad(out, (q, k, v, rpb), grad), torch.autograd.grad(ref, (q, k, v, rpb), grad)
    ):
        torch.testing.assert_close(a, b)


def test_dropout_keeps_gradients_and_expectation() -> None:
    """With dropout the probabilities are rescaled, so the mean over many draws is the plain output."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 12, 4, dtype=F64).requires_grad_() for _ in range(3))
    out = na1d(q, k, v, 5, dropout_p=0.5)
    (gq,) = torch.autograd.grad(out.sum(), (q,))
    assert torch.isfinite(gq).all()
    with torch.no_grad():
        mean = torch.stack([na1d(q, k, v, 5, dropout_p=0.5) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, neighborhood_attention_reference(q, k, v, 5), atol=0.08, rtol=0)


def test_na3d_is_3d_neighbourhood_attention() -> None:
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 5, 6, 7, 4, dtype=F64, generator=g) for _ in range(3))
    rpb = torch.randn(2, 5, 5, 3, dtype=F64, generator=g)
    out = na3d(q, k, v, (3, 3, 2), (1, 2, 3), (False, True, False), rpb)
    torch.testing.assert_close(
        out, neighborhood_attention_reference(q, k, v, (3, 3, 2), (1, 2, 3), (False, True, False), rpb)
    )
    with pytest.raises(ValueError, match=r"q must have shape \(B, h, D, H, W, d\)"):
        na3d(q[0], k[0], v[0], 3)
    with pytest.raises(ValueError, match="kernel_size"):
        na3d(q, k, v, 0)


class _Peak(TorchDispatchMode):
    """Largest single intermediate (elements) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("fn", ["na1d", "na2d"])
def test_working_memory_is_bounded_by_the_chunk(fn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward and backward never hold more than a chunk of scores or a few q/k/v-sized tensors."""
    monkeypatch.setenv("ATTNZOO_FLEX", "0")
    shape, kernel = ((1, 4, 1024, 16), 63) if fn == "na1d" else ((1, 4, 40, 40, 16), 7)
    q, k, v = (torch.randn(*shape).requires_grad_() for _ in range(3))
    with _Peak() as mode:
        out = {"na1d": na1d, "na2d": na2d}[fn](q, k, v, kernel)
        torch.autograd.grad(out.sum(), (q, k, v))
    qkv = q.numel()
    assert mode.largest <= max(_na_tiles.CHUNK_ELEMENTS * 2, 4 * qkv), mode.largest
