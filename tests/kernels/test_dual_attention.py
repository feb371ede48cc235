"""Dual-attention kernels: position/channel attention vs materialised formulas, any rank, capture."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.kernels.dual_attention import channel_attention, position_attention


@pytest.mark.parametrize("spatial", [(7,), (3, 5), (2, 3, 4)])
def test_position_attention(spatial: tuple[int, ...]) -> None:
    q = torch.randn(2, 3, *spatial, dtype=torch.float64)
    k = torch.randn(2, 3, *spatial, dtype=torch.float64)
    v = torch.randn(2, 5, *spatial, dtype=torch.float64)
    probs = torch.softmax(q.flatten(2).transpose(1, 2) @ k.flatten(2), dim=-1)  # unscaled
    expected = (v.flatten(2) @ probs.transpose(1, 2)).view_as(v)
    torch.testing.assert_close(position_attention(q, k, v), expected)


@pytest.mark.parametrize("sign", [-1.0, 1.0])
@pytest.mark.parametrize("spatial", [(3, 5), (2, 3, 4)])
def test_channel_attention(sign: float, spatial: tuple[int, ...]) -> None:
    x = torch.randn(2, 6, *spatial, dtype=torch.float64)
    flat = x.flatten(2)
    energy = flat @ flat.transpose(1, 2)
    probs = torch.softmax(energy.amax(-1, keepdim=True) - energy if sign < 0 else energy, dim=-1)
    torch.testing.assert_close(channel_attention(x, sign=sign), (probs @ flat).view_as(x))


def test_capture_path_matches_fast_path() -> None:
    x = torch.randn(1, 4, 3, 3)
    q, k = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    fast = (position_attention(q, k, x), channel_attention(x))
    with attnzoo.capture() as cap:
        slow = (position_attention(q, k, x), channel_attention(x))
    assert [tuple(r.probs.shape) for r in cap.records] == [(1, 1, 9, 9), (1, 1, 4, 4)]
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
