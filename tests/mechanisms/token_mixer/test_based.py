"""based: Taylor map identity, the paper's equations in their quadratic (masked N x N) form as the float64
oracle, the official converter, Zoology's state size, the window branch, and that no
(B, h, N, D, d_v) cumulative tensor (nor N x N) is formed."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from tests.helpers import LargestStorage

from attnzoo import official
from attnzoo.kernels.linear import linear_attention
from attnzoo.mechanisms.token_mixer.based import BasedAttention, TaylorFeatureMap, taylor_feature_size
from attnzoo.mechanisms.token_mixer.sliding_window import SlidingWindowAttention


def _full_taylor(x: torch.Tensor) -> torch.Tensor:
    """The paper's map with all d^2 outer-product entries."""
    d = x.shape[-1]
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2 * d)
    return torch.cat([torch.ones_like(x[..., :1]), x / d**0.25, outer], dim=-1)


def _oracle(m: BasedAttention, x: torch.Tensor) -> torch.Tensor:
    """y_i = sum_j A_ij v_j / (sum_j A_ij + eps), A = phi(Q) phi(K)^T (lower triangle when causal)."""
    b, n, _ = x.shape
    h = m.num_heads
    q = _full_taylor(m.proj_q(x).view(b, n, h, m.feature_dim).transpose(1, 2))
    k = _full_taylor(m.proj_k(x).view(b, n, h, m.feature_dim).transpose(1, 2))
    v = m.proj_v(x).view(b, n, h, m.head_dim).transpose(1, 2)
    a = q @ k.transpose(-2, -1)
    if m.causal:
        a = a * torch.ones(n, n, dtype=a.dtype).tril()
    y = (a @ v) / (a.sum(-1, keepdim=True) + m.eps)
    return m.proj_o(y.transpose(1, 2).reshape(b, n, h * m.head_dim))


def test_taylor_map_inner_product() -> None:
    d = 5
    fm = TaylorFeatureMap(d).double()
    q, k = torch.randn(2, 7, d, dtype=torch.float64), torch.randn(2, 7, d, dtype=torch.float64)
    s = (q * k).sum(-1) / math.sqrt(d)
    assert fm(q).shape[-1] == taylor_feature_size(d) == 1 + d + d * (d + 1) // 2
    torch.testing.assert_close((fm(q) * fm(k)).sum(-1), 1 + s + s**2 / 2, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close((fm(q) * fm(k)).sum(-1), (_full_taylor(q) * _full_taylor(k)).sum(-1))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("dim", "heads", "feature_dim", "head_dim"), [(16, 2, 4, None), (24, 1, 8, None), (22, 4, 3, 5)]
)
def test_matches_quadratic_oracle(
    causal: bool, dim: int, heads: int, feature_dim: int, head_dim: int | None
) -> None:
    m = BasedAttention(dim, heads, feature_dim, head_dim=head_dim, causal=causal).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
        x = torch.randn(2, 19, dim, dtype=torch.float64)
        torch.testing.assert_close(m(x), _oracle(m, x), atol=1e-10, rtol=1e-8)


def test_state_size_is_zoology_report_and_the_real_state() -> None:
    m = BasedAttention(128, 1, 16)
    expanded = 16 * 17 // 2 + 16 + 1  # Zoology TaylorExp.expanded_size()
    assert m.state_size() == 1 * 128 * expanded + 1 * expanded == 19737
    phi = torch.randn(1, 1, 5, taylor_feature_size(16))
    _, state = linear_attention(phi, phi, torch.randn(1, 1, 5, 128 + 1))  # v with the normaliser column
    assert state.numel() == m.state_size()


def test_no_cumsum_tensor_nor_n_by_n() -> None:
    b, n, heads, fd, dv = 1, 1024, 2, 8, 16
    m = BasedAttention(heads * dv, heads, fd).eval()
    x = torch.randn(b, n, heads * dv)
    with LargestStorage() as probe, torch.no_grad():
        m(x)
    cumsum = b * heads * n * taylor_feature_size(fd) * dv
    assert probe.largest < cumsum // 8
    assert probe.largest < n * n


def test_window_branch_is_linear_plus_sliding_window() -> None:
    m = BasedAttention(8, 2, 3, window=3).double().eval()
    swa = SlidingWindowAttention(8, 2, 3, causal=True).double().eval()
    local = {k.removeprefix("local."): v for k, v in m.state_dict().items() if k.startswith("local.")}
    swa.load_state_dict(local)
    x = torch.randn(2, 17, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _oracle(m, x) + swa(x), atol=1e-10, rtol=1e-8)


def test_linear_only_is_causal_and_gradchecks() -> None:
    m = BasedAttention(8, 2, 3).double()
    x = torch.randn(1, 9, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,), fast_mode=True)
    x2 = x.detach().clone()
    x2[:, 5:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(m(x2)[:, :5], m(x.detach())[:, :5], atol=1e-12, rtol=1e-10)


def _official_sd(d_model: int, heads: int, feature_dim: int) -> dict[str, torch.Tensor]:
    hd = d_model // heads
    shapes = {
        "proj_q.weight": (heads * feature_dim, d_model),
        "proj_k.weight": (heads * feature_dim, d_model),
        "proj_v.weight": (heads * hd, d_model),
        "proj_o.weight": (d_model, heads * hd),
    }
    return {k: 0.2 * torch.randn(*s, dtype=torch.float64) for k, s in shapes.items()}


@pytest.mark.parametrize("causal", [True, False])
def test_adapter_floor_head_dim_and_non_causal(causal: bool) -> None:
    ctor = {"d_model": 22, "feature_dim": 4, "num_heads": 4, "num_key_value_heads": 4, "causal": causal}
    sd = _official_sd(22, 4, 4)
    run = official.load("based", ctor, sd)
    assert run.module.head_dim == 5 and set(run.module.state_dict()) == set(sd)
    x = torch.randn(2, 11, 22, dtype=torch.float64)
    with torch.no_grad():
        (out,) = run(hidden_states=x)
        torch.testing.assert_close(out, _oracle(run.module, x), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"apply_rotary": True}, "rotary"),
        ({"num_key_value_heads": 1}, "num_key_value_heads"),
        ({"feature_name": "performer"}, "feature_name"),
        ({"feature_dim": 5}, "proj_q.weight"),
    ],
)
def test_adapter_rejects_what_it_cannot_reproduce(change: dict[str, Any], word: str) -> None:
    ctor = {"d_model": 16, "feature_dim": 4, "num_heads": 2, "num_key_value_heads": 2, **change}
    with pytest.raises(ValueError, match=word):
        official.load("based", ctor, _official_sd(16, 2, 4))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        BasedAttention(9, 2, 4)
    with pytest.raises(ValueError, match="head_dim"):
        BasedAttention(9, 2, 4, head_dim=0)
    with pytest.raises(ValueError, match="feature_dim"):
        BasedAttention(8, 2, 0)
    with pytest.raises(ValueError, match="eps"):
        BasedAttention(8, 2, 4, eps=-1.0)
