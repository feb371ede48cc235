"""Context-aware self-attention: float64 oracle of Yang et al.'s gated global-context equations,
limits of the gate, a given context vector, capture, errors."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import randomise

import attnzoo
from attnzoo.mechanisms.token_mixer.context_aware_attention import ContextAwareSelfAttention


def _oracle(m: ContextAwareSelfAttention, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    dim = x.shape[-1]
    w, bias = m.qkv.weight, m.qkv.bias
    q = x @ w[:dim].T + bias[:dim]
    k = x @ w[dim : 2 * dim].T + bias[dim : 2 * dim]
    v = x @ w[2 * dim :].T + bias[2 * dim :]
    ctx = x.mean(1) if c is None else c  # (B, C_c)
    u = m.context_proj.weight  # (2C, C_c), no bias
    qc = (ctx @ u[:dim].T)[:, None, :]
    kc = (ctx @ u[dim:].T)[:, None, :]
    wq, wk = m.gate_q.weight[0], m.gate_k.weight[0]
    lq = torch.sigmoid(q @ wq[:dim] + (qc @ wq[dim:]) + m.gate_q.bias)[..., None]
    lk = torch.sigmoid(k @ wk[:dim] + (kc @ wk[dim:]) + m.gate_k.bias)[..., None]
    qh = (1 - lq) * q + lq * qc
    kh = (1 - lk) * k + lk * kc
    h = m.num_heads
    d = dim // h
    heads = []
    for i in range(h):
        sl = slice(i * d, (i + 1) * d)
        p = torch.softmax(qh[..., sl] @ kh[..., sl].transpose(1, 2) / d**0.5, dim=-1)
        heads.append(p @ v[..., sl])
    return torch.cat(heads, -1) @ m.proj.weight.T + m.proj.bias


@pytest.mark.parametrize("heads", [1, 4])
def test_matches_equation_oracle(heads: int) -> None:
    m = ContextAwareSelfAttention(16, heads).double()
    randomise(m)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), _oracle(m, x))


def test_given_context_replaces_the_mean() -> None:
    m = ContextAwareSelfAttention(12, 3, context_dim=20).double()
    randomise(m)
    x, c = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 20, dtype=torch.float64)
    torch.testing.assert_close(m.attend(x, context=c), _oracle(m, x, c))
    torch.testing.assert_close(m.attend(x[:1], c[:1]), _oracle(m, x[:1], c[:1]))


def test_closed_gate_is_plain_attention_and_open_gate_is_uniform() -> None:
    m = ContextAwareSelfAttention(8, 2).double()
    randomise(m)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    mhsa = attnzoo.create("mhsa", dim=8, num_heads=2).double()
    with torch.no_grad():
        mhsa.qkv.load_state_dict(m.qkv.state_dict())
        mhsa.proj.load_state_dict(m.proj.state_dict())
        for g in (m.gate_q, m.gate_k):
            g.weight.zero_()
            g.bias.fill_(-1e4)
    torch.testing.assert_close(m(x), mhsa(x))
    with torch.no_grad():
        for g in (m.gate_q, m.gate_k):
            g.bias.fill_(1e4)
    # every query and key is the context projection: attention is uniform, the mean of the values
    v = x @ m.qkv.weight[16:].T + m.qkv.bias[16:]
    expected = v.mean(1, keepdim=True).expand_as(v) @ m.proj.weight.T + m.proj.bias
    torch.testing.assert_close(m(x), expected)


def test_capture_and_gates() -> None:
    m = ContextAwareSelfAttention(8, 2).eval()
    x = torch.randn(1, 5, 8)
    with attnzoo.capture(m) as cap:
        m(x)
    assert cap.records[0].probs.shape == (1, 2, 5, 5)
    _, _, _, lq, lk = m.gates(x)
    assert lq.shape == lk.shape == (1, 5, 1)
    assert bool(((lq > 0) & (lq < 1)).all())


def test_errors() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        ContextAwareSelfAttention(10, 4)
    with pytest.raises(TypeError, match="context_dim"):
        ContextAwareSelfAttention(8, 2, context_dim=2.0)
    m = ContextAwareSelfAttention(8, 2, context_dim=6)
    with pytest.raises(ValueError, match="context"):
        m(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="context"):
        m.attend(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="context"):
        m.attend(torch.randn(1, 4, 8), context=torch.randn(1, 8))
    with pytest.raises(ValueError, match="x"):
        m.attend(torch.randn(1, 4, 6), context=torch.randn(1, 6))
