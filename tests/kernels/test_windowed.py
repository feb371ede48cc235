"""kernels.windowed: banded and grouped attention equal dense masked attention_reference in float64,
and the blocked paths never form an N x N tensor."""

from __future__ import annotations

import itertools

import pytest
import torch
from tests.helpers import LargestStorage

import attnzoo
from attnzoo.kernels import attention_reference
from attnzoo.kernels.windowed import band_mask, group_mask, grouped_attention, sliding_window_attention


def _qkv(n: int, b: int = 2, h: int = 3, d: int = 5, dv: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    shapes = ((b, h, n, d), (b, h, n, d), (b, h, n, dv))
    return tuple(torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes)


def test_band_mask_definition() -> None:
    m = band_mask(5, 5, 2, 1)
    for i, j in itertools.product(range(5), range(5)):
        assert bool(m[i, j]) == (i - 2 <= j <= i + 1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1, 7, 13, 29])
@pytest.mark.parametrize("window", [0, 1, 3, 6])
@pytest.mark.parametrize("block", [None, 1, 2, 4])
def test_sliding_window_matches_dense_reference(causal: bool, n: int, window: int, block: int | None) -> None:
    q, k, v = _qkv(n)
    right = 0 if causal else window
    out = sliding_window_attention(q, k, v, left=window, right=right, scale=0.41, block_size=block)
    ref = attention_reference(q, k, v, mask=band_mask(n, n, window, right), scale=0.41)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)


def test_sliding_window_asymmetric_band() -> None:
    q, k, v = _qkv(23)
    out = sliding_window_attention(q, k, v, left=1, right=5, block_size=3)
    ref = attention_reference(q, k, v, mask=band_mask(23, 23, 1, 5))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)


def test_sliding_window_gradients_match_dense() -> None:
    q, k, v = (t.requires_grad_(True) for t in _qkv(11, b=1, h=2))
    fn = lambda a, b, c: sliding_window_attention(a, b, c, left=2, right=0, block_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_never_materialises_n_by_n(causal: bool) -> None:
    n, w, block = 512, 8, 16
    q, k, v = _qkv(n, b=1, h=2, d=4, dv=4)
    with LargestStorage() as probe:
        sliding_window_attention(q, k, v, left=w, right=0 if causal else w, block_size=block)
    span = (1 + 1 + (0 if causal else 1)) * block
    assert probe.largest < n * n  # the dense form needs h * N * N scores
    assert probe.largest <= 2 * n * span  # h * N * span: one score per key in reach


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1, 7, 13, 30])
@pytest.mark.parametrize("group", [2, 3, 4, 8])
@pytest.mark.parametrize("num_sink", [0, 1, 4])
def test_grouped_matches_dense_reference(causal: bool, n: int, group: int, num_sink: int) -> None:
    q, k, v = _qkv(n)
    for offset in {0, group // 2, group - 1}:
        out = grouped_attention(q, k, v, group_size=group, offset=offset, num_sink=num_sink, causal=causal)
        mask = group_mask(n, group, offset=offset, num_sink=num_sink, causal=causal)
        torch.testing.assert_close(out, attention_reference(q, k, v, mask=mask), atol=1e-12, rtol=1e-10)


def test_group_mask_definition() -> None:
    m = group_mask(9, 4, offset=2, num_sink=1, causal=True)
    for i, j in itertools.product(range(9), range(9)):
        same = (i + 2) // 4 == (j + 2) // 4
        assert bool(m[i, j]) == ((same or j < 1) and j <= i)


def test_grouped_never_materialises_n_by_n() -> None:
    n, g = 512, 16
    q, k, v = _qkv(n, b=1, h=2, d=4, dv=4)
    with LargestStorage() as probe:
        grouped_attention(q, k, v, group_size=g, offset=g // 2, num_sink=4, causal=True)
    assert probe.largest < n * n
    assert probe.largest <= 2 * (n + g) * (g + 4)


def test_capture_records_the_full_pattern() -> None:
    q, k, v = _qkv(40, b=1, h=2)
    with attnzoo.capture() as cap:
        out = sliding_window_attention(q, k, v, left=3, right=0, block_size=4)
        grouped_attention(q, k, v, group_size=8, offset=4, num_sink=2, causal=True)
    probs = [r.probs for r in cap.records]
    assert [tuple(p.shape) for p in probs] == [(1, 2, 40, 40), (1, 2, 40, 40)]
    assert not probs[0].masked_select(~band_mask(40, 40, 3, 0)).any()
    assert not probs[1].masked_select(~group_mask(40, 8, offset=4, num_sink=2, causal=True)).any()
    torch.testing.assert_close(out, sliding_window_attention(q, k, v, left=3, right=0, block_size=4))


def test_bad_arguments() -> None:
    q, k, v = _qkv(6)
    with pytest.raises(ValueError, match="left"):
        sliding_window_attention(q, k, v, left=-1, right=0)
    with pytest.raises(TypeError, match="right"):
        sliding_window_attention(q, k, v, left=1, right=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_size"):
        sliding_window_attention(q, k, v, left=1, right=0, block_size=0)
    with pytest.raises(ValueError, match="same N"):
        sliding_window_attention(q, k[:, :, :5], v[:, :, :5], left=1, right=0)
    with pytest.raises(ValueError, match="offset"):
        grouped_attention(q, k, v, group_size=4, offset=4)
    with pytest.raises(ValueError, match="group_size"):
        grouped_attention(q, k, v, group_size=0)
