from __future__ import annotations

import pytest
import torch

from attnzoo.inference.bam import SoftMixtureOfAttention
from attnzoo.mechanisms.token_mixer.mhsa import MultiHeadSelfAttention


def _experts(n: int, causal: bool = False) -> list[MultiHeadSelfAttention]:
    torch.manual_seed(0)
    return [MultiHeadSelfAttention(16, 2, causal=causal).double().eval() for _ in range(n)]


@pytest.mark.parametrize("causal", [False, True])
def test_one_hot_gates_equal_that_expert(causal: bool) -> None:
    experts = _experts(3, causal)
    moe = SoftMixtureOfAttention.upcycle(experts).eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    for e, expert in enumerate(experts):
        gates = torch.nn.functional.one_hot(torch.tensor(e), 3).to(x).expand(2, 7, 3)
        torch.testing.assert_close(moe(x, gates), expert(x), atol=1e-12, rtol=1e-10)


def test_one_hot_router_equals_that_expert() -> None:
    experts = _experts(3)
    moe = SoftMixtureOfAttention.upcycle(experts).eval()
    with torch.no_grad():
        moe.router.bias.copy_(torch.tensor([0.0, 2000.0, 0.0], dtype=torch.float64))
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    assert torch.equal(
        moe.router_probs(x), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(1, 5, 3)
    )
    torch.testing.assert_close(moe(x), experts[1](x), atol=1e-12, rtol=1e-10)


def test_soft_routing_is_the_gate_weighted_sum() -> None:
    experts = _experts(2)
    moe = SoftMixtureOfAttention.upcycle(experts).eval()
    torch.nn.init.normal_(moe.router.weight)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    g = moe.router_probs(x)
    expected = g[..., :1] * experts[0](x) + g[..., 1:] * experts[1](x)
    torch.testing.assert_close(moe(x), expected, atol=1e-12, rtol=1e-10)
    # zero router: uniform average of the experts
    with torch.no_grad():
        moe.router.weight.zero_()
    torch.testing.assert_close(moe(x), (experts[0](x) + experts[1](x)) / 2, atol=1e-12, rtol=1e-10)


def test_shared_kv_uses_the_seed_projection() -> None:
    experts = _experts(2)
    seed = _experts(1)[0]
    moe = SoftMixtureOfAttention.upcycle(experts, share_kv=True, seed=seed).eval()
    assert moe.kv.weight.shape == (32, 16)
    hybrid = MultiHeadSelfAttention(16, 2).double().eval()
    with torch.no_grad():
        hybrid.load_state_dict(experts[1].state_dict())
        hybrid.qkv.weight[16:] = seed.qkv.weight[16:]
        hybrid.qkv.bias[16:] = seed.qkv.bias[16:]
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    gates = torch.tensor([0.0, 1.0], dtype=torch.float64).expand(1, 5, 2)
    torch.testing.assert_close(moe(x, gates), hybrid(x), atol=1e-12, rtol=1e-10)


def test_gradients_and_errors() -> None:
    moe = SoftMixtureOfAttention(8, 2, 3).double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: moe(t), (x,))
    with pytest.raises(ValueError, match="gates"):
        moe(x, torch.ones(1, 4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_experts"):
        SoftMixtureOfAttention(8, 2, 0)
    with pytest.raises(ValueError, match="num_heads"):
        SoftMixtureOfAttention(8, 3, 2)
