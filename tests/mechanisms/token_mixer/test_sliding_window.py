"""sliding_window: the equation (dense band-masked attention), the window's reach, the full-window limit
(== mhsa), and that long sequences never form N x N scores."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import LargestStorage

import attnzoo
from attnzoo.kernels import attention_reference, merge_heads, split_heads
from attnzoo.kernels.windowed import band_mask
from attnzoo.mechanisms.token_mixer.mhsa import MultiHeadSelfAttention
from attnzoo.mechanisms.token_mixer.sliding_window import SlidingWindowAttention


def _reference(m: SlidingWindowAttention, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[1]
    q, k, v = split_heads(m.qkv(x), 3 * m.num_heads).chunk(3, dim=1)
    mask = band_mask(n, n, m.window, 0 if m.causal else m.window)
    return m.proj(merge_heads(attention_reference(q, k, v, mask=mask)))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [5, 16, 37])
@pytest.mark.parametrize("block_size", [None, 3])
def test_matches_band_masked_reference(causal: bool, n: int, block_size: int | None) -> None:
    m = SlidingWindowAttention(12, 3, window=4, causal=causal, block_size=block_size).double().eval()
    x = torch.randn(2, n, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _reference(m, x), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_output_depends_only_on_the_window(causal: bool) -> None:
    w, n = 2, 9
    m = SlidingWindowAttention(8, 2, window=w, causal=causal, block_size=2).double()
    x = torch.randn(1, n, 8, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: m(t), x)  # (1, n, C, 1, n, C)
    reach = jac.abs().sum(dim=(0, 2, 3, 5)) > 0  # (n_out, n_in)
    assert torch.equal(reach, band_mask(n, n, w, 0 if causal else w))


@pytest.mark.parametrize("causal", [False, True])
def test_window_covering_the_sequence_is_mhsa(causal: bool) -> None:
    m = SlidingWindowAttention(8, 2, window=10, causal=causal).double().eval()
    full = MultiHeadSelfAttention(8, 2, causal=causal).double().eval()
    full.load_state_dict(m.state_dict())
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), full(x), atol=1e-12, rtol=1e-10)


def test_zoology_convention_causal_window_sees_w_plus_one_keys() -> None:
    m = SlidingWindowAttention(8, 2, window=3, causal=True).double().eval()
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    with attnzoo.capture(m) as cap, torch.no_grad():
        m(x)
    probs = cap[""][0].probs
    assert torch.equal((probs > 0).sum(-1)[0, 0], torch.tensor([1, 2, 3] + [4] * 9))


def test_long_sequence_has_no_n_by_n_tensor() -> None:
    n = 1024
    m = SlidingWindowAttention(16, 2, window=16, causal=True).eval()
    x = torch.randn(1, n, 16)
    with LargestStorage() as probe, torch.no_grad():
        m(x)
    assert probe.largest < n * n // 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        SlidingWindowAttention(8, 2, window=-1)
    with pytest.raises(ValueError, match="block_size"):
        SlidingWindowAttention(8, 2, window=2, block_size=0)
    with pytest.raises(ValueError, match="num_heads"):
        SlidingWindowAttention(9, 2, window=2)
