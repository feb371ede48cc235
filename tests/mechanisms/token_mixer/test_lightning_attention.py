"""Lightning Attention: slopes as the official _build_slope_tensor, the TNL mixer against its
equations in float64, and step decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import assert_steps_match_forward

from attnzoo.mechanisms.token_mixer.lightning_attention import (
    LightningAttention,
    alibi_slopes,
    lightning_attention,
)
from attnzoo.parity import fixture_cases, fixture_names


def test_alibi_slopes_power_of_two() -> None:
    want = torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]).reshape(4, 1, 1)
    torch.testing.assert_close(alibi_slopes(4), want, atol=0, rtol=0)
    assert alibi_slopes(8)[0].item() == 0.5


@pytest.mark.skipif("lightning_attention_reference" not in fixture_names(), reason="no parity fixtures")
def test_slopes_match_fixture_inputs() -> None:
    case1, case2, _ = fixture_cases("lightning_attention_reference")
    torch.testing.assert_close(alibi_slopes(4).double(), case1.inputs["s"], atol=0, rtol=0)
    module = LightningAttention(12, 6, layer_idx=3, num_layers=12)
    torch.testing.assert_close(module.slope_rate.double(), case2.inputs["s"], atol=0, rtol=0)


def _explicit_decay(q, k, v, s):
    n = q.shape[2]
    i = torch.arange(n)
    dist = (i[:, None] - i[None, :]).to(q.dtype)
    mask = torch.where(dist >= 0, torch.exp(-s.reshape(-1, 1, 1) * dist), torch.zeros((), dtype=q.dtype))
    return ((q @ k.transpose(-1, -2)) * mask) @ v


def test_function_matches_explicit_sum() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 70, d, generator=g, dtype=torch.float64) for d in (4, 4, 5))
    s = torch.tensor([0.5, 0.1, 2.0], dtype=torch.float64)
    want = _explicit_decay(q, k, v, s)
    torch.testing.assert_close(lightning_attention(q, k, v, s), want, atol=1e-11, rtol=1e-10)
    torch.testing.assert_close(
        lightning_attention(q, k, v), _explicit_decay(q, k, v, torch.zeros(3, dtype=torch.float64))
    )


def test_mixer_matches_equations() -> None:
    torch.manual_seed(0)
    m = LightningAttention(12, 3, bias=True, layer_idx=2, num_layers=4).double().eval()
    x = torch.randn(2, 19, 12, dtype=torch.float64)
    q, k, v = (F.silu(p(x)).view(2, 19, 3, 4).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    o = _explicit_decay(q, k, v, m.slope_rate).transpose(1, 2).reshape(2, 19, 12)
    want = m.o_proj(F.layer_norm(o, (12,), m.norm.weight, m.norm.bias) * torch.sigmoid(m.output_gate(x)))
    torch.testing.assert_close(m(x), want, atol=1e-12, rtol=1e-10)


def test_step_reproduces_forward() -> None:
    torch.manual_seed(1)
    m = LightningAttention(8, 2).double().eval()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    state = assert_steps_match_forward(m, x)
    assert state.shape == (2, 2, 4, 4) and m.state_size() == 32


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="causal"):
        LightningAttention(8, 2, causal=False)
    with pytest.raises(ValueError, match="num_layers"):
        LightningAttention(8, 2, num_layers=1)
    with pytest.raises(ValueError, match="layer_idx"):
        LightningAttention(8, 2, layer_idx=12)
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="slopes"):
        lightning_attention(q, q, q, torch.ones(3))
    with pytest.raises(ValueError, match="slopes"):
        lightning_attention(q, q, q, -torch.ones(2))
