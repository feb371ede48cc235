"""Gated cross-modal attention: float64 oracle of the reconstructed equations, gate limits, key
padding, capture, errors."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import randomise

import attnzoo
from attnzoo.mechanisms.cross_attention.gated_cross_modal_attention import GatedCrossModalAttention


def _oracle(m: GatedCrossModalAttention, x, z, keep=None) -> torch.Tensor:
    dim, h = m.dim, m.num_heads
    d = dim // h
    q = x @ m.q_proj.weight.T + m.q_proj.bias
    kv = z @ m.kv_proj.weight.T + m.kv_proj.bias
    k, v = kv[..., :dim], kv[..., dim:]
    heads = []
    for i in range(h):
        sl = slice(i * d, (i + 1) * d)
        s = q[..., sl] @ k[..., sl].transpose(1, 2) / d**0.5
        if keep is not None:
            s = s.masked_fill(~keep[:, None, :], float("-inf"))
        heads.append(torch.softmax(s, -1) @ v[..., sl])
    read = torch.cat(heads, -1) @ m.out_proj.weight.T + m.out_proj.bias
    g = torch.sigmoid(x @ m.gate.weight[:, :dim].T + read @ m.gate.weight[:, dim:].T + m.gate.bias)
    return g * read + (1 - g) * x


@pytest.mark.parametrize("heads", [1, 3])
def test_matches_equation_oracle(heads: int) -> None:
    m = GatedCrossModalAttention(12, 10, heads).double()
    randomise(m)
    x, z = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 7, 10, dtype=torch.float64)
    torch.testing.assert_close(m(x, z), _oracle(m, x, z))
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 3:] = False
    torch.testing.assert_close(m(x, z, mask=keep), _oracle(m, x, z, keep))
    z2 = z.clone()
    z2[1, 3:] = 40.0
    torch.testing.assert_close(m(x, z2, mask=keep), m(x, z, mask=keep))


def test_gate_limits() -> None:
    m = GatedCrossModalAttention(8, 8, 2).double()
    randomise(m)
    x, z = torch.randn(1, 4, 8, dtype=torch.float64), torch.randn(1, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        m.gate.weight.zero_()
        m.gate.bias.fill_(-1e4)
    torch.testing.assert_close(m(x, z), x)
    with torch.no_grad():
        m.gate.bias.fill_(1e4)
    torch.testing.assert_close(m(x, z), m.read(x, z))


def test_capture_sees_cross_matrix() -> None:
    m = attnzoo.create("gated_cross_attention", dim=8, context_dim=6, num_heads=2).eval()
    with attnzoo.capture(m) as cap:
        m(torch.randn(2, 3, 8), torch.randn(2, 5, 6))
    assert cap.records[0].probs.shape == (2, 2, 3, 5)


def test_errors() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        GatedCrossModalAttention(10, 8, 4)
    m = GatedCrossModalAttention(8, 6, 2)
    with pytest.raises(ValueError, match="context"):
        m(torch.randn(1, 3, 8), torch.randn(1, 5, 8))
