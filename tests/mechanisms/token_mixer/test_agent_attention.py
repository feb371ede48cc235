"""Agent attention: equations oracle on non-square grids, structural linearity, prefix tokens, PVT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomise_seeded

import attnzoo
from attnzoo.mechanisms.token_mixer.agent_attention import AgentAttention, AgentAttentionPVT


def _resize(t: torch.Tensor, length: int) -> torch.Tensor:
    return F.interpolate(t, size=length, mode="linear", align_corners=False)


def _oracle(m: AgentAttention, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float64 agent attention written from the equations with explicit softmax and loops over heads."""
    b, n_tok, c = x.shape
    p, hh, ww, nh, d = m.num_prefix_tokens, size[0], size[1], m.num_heads, m.head_dim
    q = x @ m.q.weight.T + (m.q.bias if m.q.bias is not None else 0)
    if m.sr_ratio > 1:
        red = F.conv2d(x.transpose(1, 2).reshape(b, c, hh, ww), m.sr.weight, m.sr.bias, stride=m.sr_ratio)
        kh, kw = red.shape[-2:]
        kv_in = F.layer_norm(red.flatten(2).transpose(1, 2), (c,), m.norm.weight, m.norm.bias)
    else:
        kh, kw = hh, ww
        kv_in = x
    kv = kv_in @ m.kv.weight.T + (m.kv.bias if m.kv.bias is not None else 0)
    k, v = kv[..., :c], kv[..., c:]
    grid_q = q[:, p:].transpose(1, 2).reshape(b, c, hh, ww)
    agents = F.adaptive_avg_pool2d(grid_q, m.pool_side).flatten(2).transpose(1, 2)
    out = torch.zeros(b, n_tok, c, dtype=x.dtype)
    for h in range(nh):
        sl = slice(h * d, (h + 1) * d)
        b1 = F.interpolate(m.an_bias[h : h + 1], size=(kh, kw), mode="bilinear", align_corners=False)[0]
        rows = _resize(m.ah_bias[h : h + 1], kh)[0]
        cols = _resize(m.aw_bias[h : h + 1], kw)[0]
        b1 = (b1 + rows[:, :, None] + cols[:, None, :]).flatten(1)
        if p:
            b1 = torch.cat([m.ac_bias[h], b1], dim=-1)
        s1 = agents[..., sl] @ k[..., sl].transpose(1, 2) * m.scale + b1
        agent_v = torch.softmax(s1, dim=-1) @ v[..., sl]
        b2 = F.interpolate(m.na_bias[h : h + 1], size=(hh, ww), mode="bilinear", align_corners=False)[0]
        rows = _resize(m.ha_bias[h : h + 1].transpose(1, 2), hh)[0]
        cols = _resize(m.wa_bias[h : h + 1].transpose(1, 2), ww)[0]
        b2 = (b2 + rows[:, :, None] + cols[:, None, :]).flatten(1).T
        if p:
            b2 = torch.cat([m.ca_bias[h], b2], dim=0)
        s2 = q[..., sl] @ agents[..., sl].transpose(1, 2) * m.scale + b2
        out[..., sl] = torch.softmax(s2, dim=-1) @ agent_v
    v_grid = v[:, p:].transpose(1, 2).reshape(b, c, kh, kw)
    if m.sr_ratio > 1:
        v_grid = F.interpolate(v_grid, size=(hh, ww), mode="bilinear", align_corners=False)
    local = F.conv2d(v_grid, m.dwc.weight, m.dwc.bias, padding=1, groups=c).flatten(2).transpose(1, 2)
    out[:, p:] = out[:, p:] + local
    return out @ m.proj.weight.T + m.proj.bias


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        ({"num_prefix_tokens": 1, "window": 4}, (5, 7)),
        ({"num_prefix_tokens": 2, "window": (6, 3)}, (7, 5)),
        ({"num_prefix_tokens": 0, "window": 4, "sr_ratio": 2}, (5, 7)),
        ({"num_prefix_tokens": 0, "window": (4, 6), "sr_ratio": 3, "qkv_bias": True}, (6, 9)),
    ],
)
def test_matches_equation_oracle_on_non_square_grids(kwargs: dict, size: tuple[int, int]) -> None:
    m = AgentAttention(16, 2, agent_num=9, **kwargs).double().eval()
    randomise_seeded(m)
    x = torch.randn(2, m.num_prefix_tokens + size[0] * size[1], 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x, size=size), _oracle(m, x, size), atol=1e-12, rtol=1e-10)


def test_reference_grid_biases_are_not_resized() -> None:
    """At the stored grid the row/column biases enter unchanged (official checkpoints reproduce)."""
    m = AgentAttention(8, 2, agent_num=4, window=(3, 5), num_prefix_tokens=1).double()
    randomise_seeded(m)
    bias = m._agent_bias((3, 5))
    grid = F.interpolate(m.an_bias, size=(3, 5), mode="bilinear", align_corners=False)
    want = (grid + m.ah_bias[..., None] + m.aw_bias[..., None, :]).flatten(2)
    torch.testing.assert_close(bias[..., 1:], want, atol=0, rtol=0)
    torch.testing.assert_close(bias[..., :1], m.ac_bias, atol=0, rtol=0)
    assert m._query_bias((6, 2)).shape == (2, 1 + 12, 4)


def test_attention_maps_are_linear_in_tokens() -> None:
    """Only (N x n) and (n x N) maps are formed, never N x N."""
    m = AgentAttention(16, 2, agent_num=4, window=6, num_prefix_tokens=1).eval()
    n = 1 + 6 * 8
    with attnzoo.capture(m) as cap:
        m(torch.randn(2, n, 16), size=(6, 8))
    shapes = sorted(tuple(r.probs.shape) for r in cap.records)
    assert shapes == [(2, 2, 4, n), (2, 2, n, 4)]


def test_prefix_tokens_get_no_dwc_term() -> None:
    m = AgentAttention(8, 2, agent_num=4, window=4, num_prefix_tokens=2).double().eval()
    randomise_seeded(m)
    x = torch.randn(1, 2 + 12, 8, dtype=torch.float64)
    before = m(x, size=(3, 4))
    with torch.no_grad():
        m.dwc.weight.add_(1.0)
    after = m(x, size=(3, 4))
    torch.testing.assert_close(after[:, :2], before[:, :2], atol=0, rtol=0)
    assert not torch.allclose(after[:, 2:], before[:, 2:])


def test_pvt_class_has_no_prefix_and_handles_non_divisible_grid() -> None:
    m = AgentAttentionPVT(8, 2, agent_num=4, window=8, sr_ratio=2).double().eval()
    assert m.num_prefix_tokens == 0 and not hasattr(m, "ac_bias")
    randomise_seeded(m)
    x = torch.randn(2, 5 * 7, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x, size=(5, 7)), _oracle(m, x, (5, 7)), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"agent_num": 8}, "agent_num"),
        ({"sr_ratio": 2, "num_prefix_tokens": 1}, "sr_ratio"),
        ({"window": (4, 0)}, "window"),
        ({"num_prefix_tokens": -1}, "num_prefix_tokens"),
        ({"sr_ratio": 0, "num_prefix_tokens": 0}, "sr_ratio"),
    ],
)
def test_bad_config(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        AgentAttention(8, 2, **kwargs)


def test_grid_smaller_than_sr_ratio_is_rejected() -> None:
    m = AgentAttentionPVT(8, 2, agent_num=4, window=4, sr_ratio=3)
    with pytest.raises(ValueError, match="sr_ratio"):
        m(torch.randn(1, 2 * 6, 8), size=(2, 6))
