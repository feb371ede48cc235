"""Attention-MIL pooling: equations, padding, batch-of-bags behaviour."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.pooling.attention_mil import AttentionMIL


def _reference(m: AttentionMIL, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8/9 of Ilse et al. for one bag (N, L), written out."""
    att = m.attention
    k = torch.tanh(bag @ att.proj_v.weight.T + att.proj_v.bias)
    if att.proj_u is not None:
        k = k * torch.sigmoid(bag @ att.proj_u.weight.T + att.proj_u.bias)
    logits = (k @ att.score.weight.T + att.score.bias).T  # (K, N)
    a = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    a = a / a.sum(dim=1, keepdim=True)
    return (a @ bag).flatten(), a


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("branches", [1, 3])
def test_matches_equations(gated: bool, branches: int) -> None:
    torch.manual_seed(0)
    m = AttentionMIL(10, 6, branches, gated=gated).double()
    x = torch.randn(3, 8, 10, dtype=torch.float64)
    out = m(x)
    assert out.pooled.shape == (3, branches * 10)
    assert out.attention.shape == ((3, 8) if branches == 1 else (3, branches, 8))
    for b in range(3):
        pooled, a = _reference(m, x[b])
        torch.testing.assert_close(out.pooled[b], pooled)
        torch.testing.assert_close(out.attention[b], a[0] if branches == 1 else a)
    assert (m.attention.proj_u is None) != gated


def test_padded_batch_equals_each_bag_alone() -> None:
    torch.manual_seed(1)
    m = attnzoo.create("attention_mil", dim=12, attn_dim=8, branches=2).double().eval()
    lengths = [5, 9, 1]
    bags = [torch.randn(n, 12, dtype=torch.float64) for n in lengths]
    x = torch.randn(3, 9, 12, dtype=torch.float64) * 100.0  # padding holds junk
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)] = bag
        mask[i, : len(bag)] = True
    out = m(x, mask=mask)
    for i, bag in enumerate(bags):
        alone = m(bag[None])
        torch.testing.assert_close(out.pooled[i], alone.pooled[0])
        torch.testing.assert_close(out.attention[i, :, : len(bag)], alone.attention[0])
        assert torch.all(out.attention[i, :, len(bag) :] == 0)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 2, dtype=torch.float64))


def test_logits_are_pre_softmax_scores() -> None:
    torch.manual_seed(2)
    m = AttentionMIL(6, 4, 2).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(m.logits(x).softmax(-1), m(x).attention)


def test_capture_records_the_instance_attention() -> None:
    m = AttentionMIL(6, 4, 1)
    x = torch.randn(2, 5, 6)
    with attnzoo.capture(m) as cap:
        out = m(x)
    (rec,) = cap[""]
    torch.testing.assert_close(rec.probs[:, 0, 0], out.attention)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="branches"):
        AttentionMIL(6, 4, 0)
    with pytest.raises(ValueError, match="attn_dim"):
        AttentionMIL(6, 0)
    with pytest.raises(TypeError, match="gated"):
        AttentionMIL(6, 4, gated=1)  # type: ignore[arg-type]
    m = AttentionMIL(6, 4)
    with pytest.raises(ValueError, match="no instance"):
        m(torch.randn(2, 3, 6), mask=torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(TypeError, match="mask"):
        m(torch.randn(2, 3, 6), mask=torch.ones(2, 3))
