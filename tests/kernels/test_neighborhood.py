"""Neighborhood attention kernel: tiled path vs the naive explicit-index reference, vs dense masked
attention, vs the NATTEN <= 0.17 bias rule, vs the ``natten`` package (oracle), and structure."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import attnzoo
from attnzoo.kernels import attention_reference
from attnzoo.kernels.neighborhood import (
    na1d,
    na2d,
    neighborhood_attention,
    neighborhood_attention_reference,
    neighborhood_indices,
    neighborhood_mask,
)

F64 = torch.float64

CASES_1D = [
    # (L, kernel, dilation, causal)
    (7, 3, 1, False),
    (7, 3, 2, False),
    (9, 4, 2, False),
    (10, 3, 3, True),
    (7, 7, 1, False),
    (13, 5, 2, True),
    (8, 2, 1, False),
    (5, 1, 1, False),
]

CASES_2D = [
    # ((H, W), kernel, dilation, causal)
    ((5, 7), 3, 1, False),
    ((5, 7), (3, 5), 1, False),
    ((9, 8), 3, 2, False),
    ((6, 7), (3, 2), (2, 3), (True, False)),
    ((5, 7), (5, 7), 1, False),
    ((11, 9), (4, 3), (2, 3), (False, True)),
]


def _qkv(*shape: int, dtype: torch.dtype = F64) -> list[torch.Tensor]:
    return [torch.randn(*shape, dtype=dtype) for _ in range(3)]


def _rpb(heads: int, kernel: int | tuple[int, ...], nd: int, dtype: torch.dtype = F64) -> torch.Tensor:
    ks = (kernel,) * nd if isinstance(kernel, int) else kernel
    return torch.randn(heads, *(2 * k - 1 for k in ks), dtype=dtype)


@pytest.mark.parametrize("case", CASES_1D)
@pytest.mark.parametrize("tile", [1, 3, 64])
@pytest.mark.parametrize("with_rpb", [False, True])
def test_na1d_tiled_matches_reference(case: tuple, tile: int, with_rpb: bool) -> None:
    length, k, d, causal = case
    q, kk, v = _qkv(2, 2, length, 4)
    rpb = _rpb(2, k, 1) if with_rpb else None
    out = na1d(q, kk, v, k, d, causal, rpb, tile_size=tile)
    ref = neighborhood_attention_reference(q, kk, v, k, d, causal, rpb)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("case", CASES_2D)
@pytest.mark.parametrize("tile", [1, (2, 3), 8])
@pytest.mark.parametrize("with_rpb", [False, True])
def test_na2d_tiled_matches_reference(case: tuple, tile: int | tuple[int, int], with_rpb: bool) -> None:
    size, k, d, causal = case
    q, kk, v = _qkv(2, 2, *size, 4)
    rpb = _rpb(2, k, 2) if with_rpb else None
    out = na2d(q, kk, v, k, d, causal, rpb, tile_size=tile)
    ref = neighborhood_attention_reference(q, kk, v, k, d, causal, rpb)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("case", CASES_2D)
def test_matches_dense_masked_attention(case: tuple) -> None:
    """NA == softmax attention over all tokens with the neighbourhood as mask and the gathered bias."""
    size, k, d, causal = case
    heads, n = 2, size[0] * size[1]
    q, kk, v = _qkv(1, heads, *size, 4)
    rpb = _rpb(heads, k, 2)
    ks = (k, k) if isinstance(k, int) else k
    dil = (d, d) if isinstance(d, int) else d
    mask = neighborhood_mask(size, k, d, causal)
    rows = torch.arange(size[0]).repeat_interleave(size[1])
    cols = torch.arange(size[1]).repeat(size[0])
    off_r = (rows[None, :] - rows[:, None]).div(dil[0], rounding_mode="floor") + ks[0] - 1
    off_c = (cols[None, :] - cols[:, None]).div(dil[1], rounding_mode="floor") + ks[1] - 1
    bias = rpb[:, off_r.clamp(0, 2 * ks[0] - 2), off_c.clamp(0, 2 * ks[1] - 2)]
    dense = attention_reference(
        q.reshape(1, heads, n, 4), kk.reshape(1, heads, n, 4), v.reshape(1, heads, n, 4), mask=mask, bias=bias
    )
    torch.testing.assert_close(na2d(q, kk, v, k, d, causal, rpb), dense.reshape(1, heads, *size, 4))


def _old_natten_window_start(i: int, length: int, k: int, d: int) -> int:
    """NATTEN <= 0.17's rule for the first neighbour of ``i`` (odd k), rewritten from its definition."""
    half = k // 2
    if d == 1:
        return max(i - half, 0) + (length - i - half - 1 if i + half >= length else 0)
    if i - half * d < 0:
        return i % d
    if i + half * d >= length:
        r = i % d
        full = (length // d) * d
        rest = length - full
        return length - rest + r - 2 * half * d if r < rest else full + r - k * d
    return i - half * d


def _old_natten_bias_start(i: int, length: int, k: int, d: int) -> int:
    """NATTEN <= 0.17's index of the first neighbour's entry in the ``2k - 1`` bias table."""
    half = k // 2
    if d == 1:
        return half + (half - i if i < half else 0) + (length - i - 1 - half if i + half >= length else 0)
    if i - half * d < 0:
        return k - 1 - i // d
    if i + half * d >= length:
        return (length - i - 1) // d
    return half


@pytest.mark.parametrize(("length", "k", "d"), [(9, 3, 1), (9, 5, 1), (11, 3, 2), (13, 3, 3), (10, 5, 2)])
def test_rpb_follows_natten_017_rule_1d(length: int, k: int, d: int) -> None:
    """Loop reference with NATTEN <= 0.17's window/bias-start rules (odd k, non-causal)."""
    heads = 2
    q, kk, v = _qkv(1, heads, length, 3)
    rpb = _rpb(heads, k, 1)
    expected = torch.zeros_like(v)
    for h in range(heads):
        for i in range(length):
            start, pb = _old_natten_window_start(i, length, k, d), _old_natten_bias_start(i, length, k, d)
            keys = [start + t * d for t in range(k)]
            s = torch.stack([q[0, h, i] @ kk[0, h, j] * 3**-0.5 + rpb[h, pb + t] for t, j in enumerate(keys)])
            expected[0, h, i] = s.softmax(0) @ v[0, h, keys]
    torch.testing.assert_close(na1d(q, kk, v, k, d, rpb=rpb), expected)


def test_rpb_follows_natten_017_rule_2d() -> None:
    size, k, d, heads = (7, 9), 3, 2, 2
    q, kk, v = _qkv(1, heads, *size, 3)
    rpb = _rpb(heads, k, 2)
    expected = torch.zeros_like(v)
    for h in range(heads):
        for i in range(size[0]):
            for j in range(size[1]):
                si, sj = (
                    _old_natten_window_start(i, size[0], k, d),
                    _old_natten_window_start(j, size[1], k, d),
                )
                pi, pj = _old_natten_bias_start(i, size[0], k, d), _old_natten_bias_start(j, size[1], k, d)
                scores, values = [], []
                for a in range(k):
                    for c in range(k):
                        r, col = si + a * d, sj + c * d
                        scores.append(q[0, h, i, j] @ kk[0, h, r, col] * 3**-0.5 + rpb[h, pi + a, pj + c])
                        values.append(v[0, h, r, col])
                expected[0, h, i, j] = torch.stack(scores).softmax(0) @ torch.stack(values)
    torch.testing.assert_close(na2d(q, kk, v, k, d, rpb=rpb), expected)


@pytest.mark.parametrize(("length", "k", "d"), [(7, 3, 1), (10, 4, 2), (11, 3, 3), (6, 6, 1)])
def test_neighbourhood_structure(length: int, k: int, d: int) -> None:
    index, valid = neighborhood_indices(length, k, d)
    assert valid.all(), "non-causal windows always hold exactly k keys"
    for i in range(length):
        keys = index[i].tolist()
        assert len(set(keys)) == k and all(j % d == i % d for j in keys)
        assert all(b - a == d for a, b in itertools.pairwise(keys)), "consecutive in the group"
        if k % 2:
            assert i in keys
    index, valid = neighborhood_indices(length, k, d, is_causal=True)
    for i in range(length):
        keys = index[i][valid[i]].tolist()
        assert max(keys) == i and all(j <= i for j in keys)
        assert len(keys) == min(k, i // d + 1)


def test_capture_records_dense_neighbourhood_probs() -> None:
    q, kk, v = _qkv(2, 2, 5, 6, 4)
    rpb = _rpb(2, 3, 2)
    plain = na2d(q, kk, v, 3, rpb=rpb)
    with attnzoo.capture(scores=True) as cap:
        captured = na2d(q, kk, v, 3, rpb=rpb)
    torch.testing.assert_close(captured, plain)
    (rec,) = cap.records
    assert rec.kind == "neighborhood" and rec.probs.shape == (2, 2, 30, 30)
    torch.testing.assert_close(rec.probs.sum(-1), torch.ones(2, 2, 30, dtype=F64))
    outside = ~neighborhood_mask((5, 6), 3)
    assert (rec.probs[..., outside] == 0).all()
    assert torch.isneginf(rec.scores[..., outside]).all()
    assert (rec.probs[..., ~outside] > 0).all()


def test_gradients_match_reference() -> None:
    q, kk, v = (t.requires_grad_() for t in _qkv(1, 2, 6, 7, 3))
    rpb = _rpb(2, 3, 2).requires_grad_()
    args = (q, kk, v, 3, (1, 2), False, rpb)
    grads = torch.autograd.grad(na2d(*args, tile_size=(2, 2)).square().sum(), (q, kk, v, rpb))
    ref = torch.autograd.grad(neighborhood_attention_reference(*args).square().sum(), (q, kk, v, rpb))
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda *t: na1d(*t, 3, 2, True, tile_size=2), [t.requires_grad_() for t in _qkv(1, 1, 7, 2)]
    )


class _LargestTensor(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("with_rpb", [False, True])
def test_no_quadratic_tensor(with_rpb: bool) -> None:
    """On a 48 x 48 grid (N = 2304) no intermediate comes near the N^2 scores of dense attention."""
    b, h, n_side, k = 1, 2, 48, 7
    q, kk, v = _qkv(b, h, n_side, n_side, 8, dtype=torch.float32)
    rpb = _rpb(h, k, 2, dtype=torch.float32) if with_rpb else None
    n = n_side * n_side
    with _LargestTensor() as mode:
        na2d(q, kk, v, k, rpb=rpb)
    assert mode.largest < b * h * n * n // 8, f"largest intermediate has {mode.largest} elements"
    # the tiled scores: each query scores at most (t_H + k - 1) (t_W + k - 1) keys
    assert mode.largest <= b * h * n * (4 + k - 1) * (8 + k - 1)


def test_dilation_groups_are_independent() -> None:
    """With dilation d, each residue class is plain NA on its own sub-grid."""
    q, kk, v = _qkv(1, 2, 11, 4)
    out = na1d(q, kk, v, 3, dilation=2)
    for r in range(2):
        sub = na1d(q[:, :, r::2], kk[:, :, r::2], v[:, :, r::2], 3)
        torch.testing.assert_close(out[:, :, r::2], sub)


def test_kernel_covering_the_input_is_full_attention() -> None:
    q, kk, v = _qkv(2, 2, 4, 5, 3)
    full = attention_reference(*(t.reshape(2, 2, 20, 3) for t in (q, kk, v)))
    torch.testing.assert_close(na2d(q, kk, v, (4, 5)), full.reshape(2, 2, 4, 5, 3))


def test_bad_arguments() -> None:
    q, kk, v = _qkv(1, 2, 6, 4)
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        na1d(q, kk, v, 4, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        na1d(q, kk, v, 0)
    with pytest.raises(ValueError, match="dilation"):
        na1d(q, kk, v, 3, 0)
    with pytest.raises(ValueError, match="rpb"):
        na1d(q, kk, v, 3, rpb=torch.zeros(2, 4, dtype=F64))
    with pytest.raises(TypeError, match="kernel_size"):
        na1d(q, kk, v, "3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="q, k, v"):
        na1d(q, kk[:, :, :5], v, 3)
    with pytest.raises(ValueError, match=r"\(B, h, H, W, d\)"):
        na2d(q, kk, v, 3)
    with pytest.raises(ValueError, match="tile_size"):
        neighborhood_attention(q, kk, v, 3, tile_size=0)


# --------------------------------------------------------------------------- natten oracle


def _natten_call(
    fn_name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: object
) -> torch.Tensor:
    natten = pytest.importorskip("natten")
    heads_last = [t.movedim(1, -2).contiguous() for t in (q, k, v)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = getattr(natten, fn_name)(*heads_last, backend="flex-fna", **kw)
    return out.movedim(-2, 1)


@pytest.mark.oracle
@pytest.mark.parametrize("case", [c for c in CASES_1D if c[1] > 1])  # natten needs kernel_size > 1
def test_na1d_matches_natten(case: tuple) -> None:
    length, k, d, causal = case
    q, kk, v = _qkv(2, 2, length, 8, dtype=torch.float32)
    expected = _natten_call("na1d", q, kk, v, kernel_size=k, dilation=d, is_causal=causal)
    torch.testing.assert_close(na1d(q, kk, v, k, d, causal), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.oracle
@pytest.mark.parametrize("case", [*CASES_2D, ((16, 13), 7, 1, False), ((14, 15), 5, (2, 3), False)])
def test_na2d_matches_natten(case: tuple) -> None:
    size, k, d, causal = case
    q, kk, v = _qkv(2, 2, *size, 8, dtype=torch.float32)
    expected = _natten_call("na2d", q, kk, v, kernel_size=k, dilation=d, is_causal=causal)
    torch.testing.assert_close(na2d(q, kk, v, k, d, causal), expected, atol=1e-5, rtol=1e-5)
