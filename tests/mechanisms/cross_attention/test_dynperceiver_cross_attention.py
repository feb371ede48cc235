"""Dynamic Perceiver cross-attention layer: float64 equation oracle, masks, position bias, capture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomise

import attnzoo
from attnzoo.mechanisms.cross_attention.dynperceiver_cross_attention import (
    DynPerceiverCrossAttention,
    PerceiverAttention,
)


def _oracle(m: DynPerceiverCrossAttention, x: torch.Tensor, ctx: torch.Tensor, pad: torch.Tensor | None):
    a = m.attn
    xq = F.layer_norm(x, (x.shape[-1],), m.q_norm.weight, m.q_norm.bias)
    xk = F.layer_norm(ctx, (ctx.shape[-1],), m.kv_norm.weight, m.kv_norm.bias)
    q, k, v = xq @ a.q_proj.weight.T, xk @ a.k_proj.weight.T, xk @ a.v_proj.weight.T
    if a.key_position_bias is not None:
        k = k + a.key_position_bias
    h = a.num_heads
    outs = []
    for i in range(h):
        qs, ks, vs = (t.chunk(h, dim=-1)[i] for t in (q, k, v))
        logits = qs @ ks.transpose(1, 2) * qs.shape[-1] ** -0.5
        if pad is not None:
            logits = logits.masked_fill(pad[:, None, :], -torch.finfo(logits.dtype).max)
        outs.append(logits.softmax(-1) @ vs)
    att = torch.cat(outs, -1) @ a.o_proj.weight.T + a.o_proj.bias
    y = x + att if m.attention_residual else att
    yn = F.layer_norm(y, (y.shape[-1],), m.mlp_norm.weight, m.mlp_norm.bias)
    hid = F.gelu(yn @ m.fc1.weight.T + m.fc1.bias)
    return y + hid @ m.fc2.weight.T + m.fc2.bias


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("tokens", [None, 6])
def test_matches_equation_oracle(residual: bool, tokens: int | None) -> None:
    m = DynPerceiverCrossAttention(
        12, 10, 2, qk_dim=8, v_dim=6, widening_factor=2, attention_residual=residual, context_tokens=tokens
    ).double()
    randomise(m)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    ctx = torch.randn(2, 6, 10, dtype=torch.float64)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    torch.testing.assert_close(m(x, ctx, mask=~pad), _oracle(m, x, ctx, pad))
    torch.testing.assert_close(m(x, ctx), _oracle(m, x, ctx, None))


def test_masked_keys_do_not_matter() -> None:
    m = DynPerceiverCrossAttention(8, 8, 2).double()
    x, ctx = torch.randn(1, 3, 8, dtype=torch.float64), torch.randn(1, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, False]])
    ctx2 = ctx.clone()
    ctx2[:, ~mask[0]] = 100.0
    torch.testing.assert_close(m(x, ctx, mask=mask), m(x, ctx2, mask=mask))


def test_bare_attention_output_channels_and_capture() -> None:
    m = PerceiverAttention(12, 10, 4, qk_dim=16, v_dim=8, out_dim=6).double()
    x, ctx = torch.randn(2, 7, 12, dtype=torch.float64), torch.randn(2, 11, 10, dtype=torch.float64)
    with attnzoo.capture(m) as cap:
        out = m(x, ctx)
    assert out.shape == (2, 7, 6)
    probs = cap.records[0].probs
    assert probs.shape == (2, 4, 7, 11)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 7, dtype=torch.float64))


def test_errors() -> None:
    m = DynPerceiverCrossAttention(8, 8, 2, context_tokens=4)
    with pytest.raises(ValueError, match="context_tokens"):
        m(torch.randn(1, 3, 8), torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match="mask"):
        m(torch.randn(1, 3, 8), torch.randn(1, 4, 8), mask=torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_heads"):
        DynPerceiverCrossAttention(8, 8, 3)
    with pytest.raises(ValueError, match="num_heads"):
        DynPerceiverCrossAttention(8, 8, 2, qk_dim=8, v_dim=5)
    with pytest.raises(ValueError, match="widening_factor"):
        DynPerceiverCrossAttention(8, 8, widening_factor=0)
