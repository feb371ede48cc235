"""OAT object-level cross-attention: logits equation, read-out, placeholder, mask, capture."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.cross_attention.oat_cross_attention import ObjectCrossAttention


def _setup(d_k: int = 64) -> tuple[ObjectCrossAttention, torch.Tensor, torch.Tensor]:
    m = ObjectCrossAttention(8, d_k=d_k).double()
    return m, torch.randn(2, 4, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)


def test_logits_equation_and_placeholder() -> None:
    m, x, ctx = _setup(d_k=512)
    d = x @ m.decode_fc.weight.T + m.decode_fc.bias
    e = ctx @ m.encode_fc.weight.T + m.encode_fc.bias
    want = torch.cat([d @ e.transpose(1, 2), torch.zeros(2, 4, 1, dtype=torch.float64)], -1) / 512**0.5
    got = m.logits(x, ctx)
    torch.testing.assert_close(got, want)
    assert torch.equal(got[..., -1], torch.zeros(2, 4, dtype=torch.float64))


def test_forward_is_readout_of_logits() -> None:
    m, x, ctx = _setup()
    values = torch.cat([ctx, torch.zeros(2, 1, 8, dtype=torch.float64)], 1)
    torch.testing.assert_close(m(x, ctx), m.logits(x, ctx).softmax(-1) @ values)


def test_mask_excludes_objects_not_placeholder() -> None:
    m, x, ctx = _setup()
    mask = torch.tensor([[True, False, True, True, False], [False] * 5])
    logits = m.logits(x, ctx, mask=mask)
    assert torch.isinf(logits[0, :, [1, 4]]).all() and torch.isinf(logits[1, :, :5]).all()
    assert torch.isfinite(logits[..., -1]).all()
    out = m(x, ctx, mask=mask)
    # Everything masked: all weight on the zero placeholder value.
    torch.testing.assert_close(out[1], torch.zeros(4, 8, dtype=torch.float64))
    values = torch.cat([ctx, torch.zeros(2, 1, 8, dtype=torch.float64)], 1)
    torch.testing.assert_close(out[0], logits[0].softmax(-1) @ values[0])


def test_capture_records_object_distribution() -> None:
    m, x, ctx = _setup()
    with attnzoo.capture(m) as cap:
        m(x, ctx)
    probs = cap[""][0].probs
    assert probs.shape == (2, 1, 4, 6)
    torch.testing.assert_close(probs[:, 0], m.logits(x, ctx).softmax(-1))


def test_errors() -> None:
    with pytest.raises(ValueError, match="d_k"):
        ObjectCrossAttention(8, d_k=0)
    m = ObjectCrossAttention(8)
    with pytest.raises(ValueError, match="context"):
        m(torch.randn(1, 3, 8), torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match="context"):
        m.logits(torch.randn(1, 3, 8), torch.randn(2, 4, 8))
