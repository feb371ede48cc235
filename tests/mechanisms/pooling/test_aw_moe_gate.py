"""AW-MoE gate: equations written out per behaviour, padded sequences, query validation."""

from __future__ import annotations

import pytest
import torch

from attnzoo.mechanisms.pooling.aw_moe_gate import AWMoEGate


def _reference(m: AWMoEGate, seq: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g1, _, g2 = m.gate_unit
    a1, _, a2 = m.activation_unit
    total = torch.zeros(m.num_experts, dtype=seq.dtype)
    acts = []
    for e in seq:
        g = g2.weight @ torch.relu(g1.weight @ e + g1.bias) + g2.bias
        z = torch.cat([e, q, e - q, e * q])
        a = (a2.weight @ torch.relu(a1.weight @ z + a1.bias) + a2.bias)[0]
        acts.append(a)
        total = total + a * g
    return torch.softmax(total, 0), torch.stack(acts)


def test_equations_and_padding() -> None:
    torch.manual_seed(0)
    m = AWMoEGate(6, 4, 5, 7).double()
    lengths = [5, 2, 7]
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    q = torch.randn(3, 6, dtype=torch.float64)
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    out = m(x, mask=mask, query=q)
    assert out.pooled.shape == (3, 4) and out.attention.shape == (3, 7)
    for b, n in enumerate(lengths):
        w, a = _reference(m, x[b, :n], q[b])
        torch.testing.assert_close(out.pooled[b], w)
        torch.testing.assert_close(out.attention[b, :n], a)
        assert torch.all(out.attention[b, n:] == 0)
        alone = m(x[b : b + 1, :n], query=q[b : b + 1])
        torch.testing.assert_close(alone.pooled[0], out.pooled[b])
    torch.testing.assert_close(out.pooled.sum(-1), torch.ones(3, dtype=torch.float64))


def test_query_is_required_and_checked() -> None:
    m = AWMoEGate(6, 3)
    x = torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match="query is required"):
        m(x)
    with pytest.raises(ValueError, match="query must have shape"):
        m(x, query=torch.randn(2, 5))
    with pytest.raises(TypeError, match="query"):
        m(x, query=torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="num_experts"):
        AWMoEGate(6, 0)
