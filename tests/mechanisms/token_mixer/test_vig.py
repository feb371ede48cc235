"""ViG mixer against ViG's training-path equations written out in float64: forward scan on x,
backward scan on flip(x) with the backward gates flipped, (o_f + flip(o_b)) / 2, then the 2-D
gating locality injection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.mechanisms.token_mixer.vig import ViGAttention


def _scan(q, k, v, gk):
    b, h, n, dk = q.shape
    s = torch.zeros(b, h, dk, v.shape[-1], dtype=q.dtype)
    out = torch.zeros(b, h, n, v.shape[-1], dtype=q.dtype)
    for t in range(n):
        s = s * gk[:, :, t].exp()[..., None] + k[:, :, t, :, None] * v[:, :, t, None, :]
        out[:, :, t] = (q[:, :, t, None, :] * dk**-0.5 @ s)[:, :, 0]
    return out


def _rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _vig_reference(m: ViGAttention, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, n, c = x.shape
    h = m.num_heads
    heads = lambda t: t.reshape(b, n, h, -1).transpose(1, 2)  # noqa: E731
    z = m.in_proj(x.transpose(1, 2).reshape(b, c, *size)).flatten(2).transpose(1, 2)
    q, k, v = m.qkv_proj(z).split([m.key_dim, m.key_dim, c], dim=-1)
    gk = F.logsigmoid(m.gk_proj(z)) / 16
    if m.clamp_min is not None:
        gk = gk.clamp_min(m.clamp_min)
    fw, bw = gk.chunk(2, dim=-1)
    q, k, v, fw, bw = map(heads, (q, k, v, fw, bw))
    o_f = _scan(q, k, v, fw)
    o_b = _scan(q.flip(2), k.flip(2), v.flip(2), bw.flip(2)).flip(2)
    o = ((o_f + o_b) / 2).transpose(1, 2)  # b l h d
    local = z.reshape(b, n, h, -1)
    g = torch.sigmoid(m.g_proj(z)).reshape(b, n, h, -1)
    mixed = _rms(o, m.g_norm.weight) * g + _rms(local, m.l_norm.weight) * (1 - g)
    return m.o_proj(mixed.reshape(b, n, c))


@pytest.mark.parametrize("size", [(5, 7), (4, 4), (1, 9)])
def test_matches_vig_equations(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    m = ViGAttention(16, 2, clamp_min=-0.3, conv_bias=True).double().eval()
    with torch.no_grad():
        m.gk_proj[1].bias.sub_(20.0)  # strong gates: logsigmoid(-20)/16 ~ -1.25 per token
        m.g_norm.weight.uniform_(0.5, 1.5)
        m.l_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, size[0] * size[1], 16, dtype=torch.float64)
    torch.testing.assert_close(m(x, size=size), _vig_reference(m, x, size), atol=1e-12, rtol=1e-10)


def test_long_grid_crosses_chunks() -> None:
    torch.manual_seed(1)
    m = attnzoo.create("vig", dim=8, num_heads=2, conv_act=False).double().eval()
    x = torch.randn(1, 6 * 11, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x, size=(6, 11)), _vig_reference(m, x, (6, 11)), atol=1e-12, rtol=1e-10)
    assert m.state_size() == 2 * 4 * 8 // 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        ViGAttention(8, 3)
    with pytest.raises(ValueError, match="num_heads"):
        ViGAttention(8, 8, expand_k=0.5)
    with pytest.raises(ValueError, match="clamp_min"):
        ViGAttention(8, 2, clamp_min=1.0)
    with pytest.raises(ValueError, match="size"):
        ViGAttention(8, 2)(torch.randn(1, 12, 8))
