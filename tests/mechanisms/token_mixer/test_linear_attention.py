"""Linear attention (elu+1) against the paper's equations written out in float64, and step decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import assert_steps_match_forward

import attnzoo
from attnzoo.mechanisms.token_mixer.linear_attention import LinearAttention


def _explicit(module: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. 6 (bidirectional) or eq. 8-9 (causal) as an explicit normalised sum over keys."""
    b, n, c = x.shape
    h, d = module.num_heads, module.head_dim
    q, k, v = module.qkv(x).view(b, n, 3, h, d).unbind(2)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    out = torch.zeros(b, n, h, d, dtype=x.dtype)
    for i in range(n):
        keys = range(i + 1) if module.causal else range(n)
        num = sum((q[:, i] * k[:, j]).sum(-1, keepdim=True) * v[:, j] for j in keys)
        den = sum((q[:, i] * k[:, j]).sum(-1, keepdim=True) for j in keys)
        out[:, i] = num / (den + module.eps)
    return module.proj(out.reshape(b, n, c))


@pytest.mark.parametrize("causal", [False, True])
def test_matches_equations(causal: bool) -> None:
    torch.manual_seed(0)
    module = LinearAttention(12, 3, causal=causal).double().eval()
    x = torch.randn(2, 21, 12, dtype=torch.float64)
    torch.testing.assert_close(module(x), _explicit(module, x), atol=1e-12, rtol=1e-10)


def test_long_causal_sequence_crosses_chunks() -> None:
    torch.manual_seed(1)
    module = LinearAttention(8, 2, causal=True).double().eval()
    x = torch.randn(1, 150, 8, dtype=torch.float64)
    torch.testing.assert_close(module(x), _explicit(module, x), atol=1e-12, rtol=1e-10)


def test_step_reproduces_forward() -> None:
    torch.manual_seed(2)
    module = attnzoo.create("linear_attention", dim=8, num_heads=2, causal=True).double().eval()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    state = assert_steps_match_forward(module, x)
    assert state.shape == (2, 2, 4, 5)
    assert module.state_size() == 2 * 4 * 5


def test_step_errors() -> None:
    module = LinearAttention(8, 2)
    with pytest.raises(ValueError, match="causal"):
        module.step(torch.randn(1, 8))
    causal = LinearAttention(8, 2, causal=True)
    with pytest.raises(ValueError, match="x_t"):
        causal.step(torch.randn(1, 7))


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        LinearAttention(10, 3)
    with pytest.raises(ValueError, match="eps"):
        LinearAttention(8, 2, eps=-1.0)
