"""GLA: the layer against its equations written out token by token in float64, step decoding,
the official naive_recurrent_gla calling convention (incl. causal=False) of the adapter, and fla's
GatedLinearAttention checkpoints (key layout written from fla/layers/gla.py) giving fla's forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import assert_steps_match_forward

from attnzoo import official
from attnzoo.mechanisms.token_mixer.gla import (
    GatedLinearAttention,
    convert_fla_gla_state_dict,
    gated_linear_attention,
)


def _scan(q, k, v, gk, state=None, reverse=False):
    """Token loop of S_t = diag(exp(gk_t)) S_{t-1} + k_t^T v_t, o_t = q_t S_t / sqrt(d_k)."""
    b, h, n, dk = q.shape
    s = torch.zeros(b, h, dk, v.shape[-1], dtype=q.dtype) if state is None else state.clone()
    out = torch.zeros(b, h, n, v.shape[-1], dtype=q.dtype)
    for t in reversed(range(n)) if reverse else range(n):
        s = s * gk[:, :, t].exp()[..., None] + k[:, :, t, :, None] * v[:, :, t, None, :]
        out[:, :, t] = (q[:, :, t, None, :] * dk**-0.5 @ s)[:, :, 0]
    return out, s


def test_layer_matches_equations() -> None:
    torch.manual_seed(0)
    m = GatedLinearAttention(12, 3, expand_k=0.5, expand_v=2.0, clamp_min=-0.05).double().eval()
    x = torch.randn(2, 23, 12, dtype=torch.float64)
    heads = lambda t: t.view(2, 23, 3, -1).transpose(1, 2)  # noqa: E731
    gk = (F.logsigmoid(m.gk_proj(x)) / 16).clamp_min(-0.05)
    o, _ = _scan(heads(m.q_proj(x)), heads(m.k_proj(x)), heads(m.v_proj(x)), heads(gk))
    o = o.transpose(1, 2)
    normed = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * m.g_norm.weight
    want = m.o_proj(normed.reshape(2, 23, 24) * F.silu(m.g_proj(x)))
    torch.testing.assert_close(m(x), want, atol=1e-12, rtol=1e-10)
    assert m.state_size() == 6 * 24 // 3


def test_step_reproduces_forward() -> None:
    torch.manual_seed(1)
    m = GatedLinearAttention(8, 2).double().eval()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    state = assert_steps_match_forward(m, x)
    assert state.shape == (2, 2, 4, 8)


def test_function_strong_gates_long_sequence() -> None:
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 200, 8, generator=g, dtype=torch.float64) for _ in range(3))
    gk = F.logsigmoid(3 * torch.randn(1, 2, 200, 8, generator=g, dtype=torch.float64)) * 5
    s0 = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)
    o, s = gated_linear_attention(q, k, v, gk, s0)
    o_ref, s_ref = _scan(q, k, v, gk, s0)
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
def test_official_calling_convention(causal: bool) -> None:
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 2, 9, 5, generator=g, dtype=torch.float64)
    gk = F.logsigmoid(torch.randn(2, 2, 9, 4, generator=g, dtype=torch.float64))
    s0 = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64)
    run = official.load("gla_reference", {}, {})
    first, second = run(q=q, k=k, v=v, gk=gk, initial_state=s0, output_final_state=False, causal=causal)
    o_ref, s_ref = _scan(q, k, v, gk, s0)
    torch.testing.assert_close(first, o_ref)
    torch.testing.assert_close(second, s_ref if causal else _scan(q, k, v, gk, reverse=True)[0])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="causal"):
        GatedLinearAttention(8, 2, causal=False)
    with pytest.raises(ValueError, match="num_heads"):
        GatedLinearAttention(8, 3)
    with pytest.raises(ValueError, match="clamp_min"):
        GatedLinearAttention(8, 2, clamp_min=0.5)
    with pytest.raises(ValueError, match="expand_v"):
        GatedLinearAttention(8, 2, expand_v=0)
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="log_gate"):
        gated_linear_attention(q, q, q, q[..., :1])
    with pytest.raises(ValueError, match="x_t"):
        GatedLinearAttention(8, 2).step(torch.randn(1, 9))


def _fla_state_dict(
    d_model: int, heads: int, expand_k: float, expand_v: float, low_rank: int, fuse_norm: bool
) -> dict[str, torch.Tensor]:
    """A ``fla.layers.gla.GatedLinearAttention(d_model, expand_v, expand_k, num_heads, gate_low_rank_dim,
    fuse_norm)`` state_dict (ViG's vendored fla): bias-free q/k/v/g/o projections, the low-rank gate
    ``gk_proj = Sequential(Linear(d, r, bias=False), Linear(r, key_dim))`` and the per-head RMSNorm
    weight under ``g_norm_swish_gate`` (FusedRMSNormSwishGate, fuse_norm=True) or ``g_norm``."""
    key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
    shapes = {
        "q_proj.weight": (key_dim, d_model),
        "k_proj.weight": (key_dim, d_model),
        "v_proj.weight": (value_dim, d_model),
        "g_proj.weight": (value_dim, d_model),
        "gk_proj.0.weight": (low_rank, d_model),
        "gk_proj.1.weight": (key_dim, low_rank),
        "gk_proj.1.bias": (key_dim,),
        "o_proj.weight": (d_model, value_dim),
        f"{'g_norm_swish_gate' if fuse_norm else 'g_norm'}.weight": (value_dim // heads,),
    }
    g = torch.Generator().manual_seed(5)
    return {k: 0.4 * torch.randn(shape, generator=g, dtype=torch.float64) for k, shape in shapes.items()}


def _fla_forward(sd, x, heads, eps=1e-5, normalizer=16):
    """fla's GatedLinearAttention.forward from its tensors: per-head q, k, v, gk = logsigmoid(x W0 W1 + b) /
    normalizer, the recurrence, RMSNorm per head times weight, times swish(g), then o_proj."""
    b, n, _ = x.shape
    per_head = lambda t: t.view(b, n, heads, -1).transpose(1, 2)  # noqa: E731  'b n (h d) -> b h n d'
    q, k, v = (per_head(x @ sd[f"{p}_proj.weight"].T) for p in "qkv")
    gk = (x @ sd["gk_proj.0.weight"].T) @ sd["gk_proj.1.weight"].T + sd["gk_proj.1.bias"]
    o, _ = _scan(q, k, v, per_head(F.logsigmoid(gk) / normalizer))
    o = o.transpose(1, 2)  # 'b h l d -> b l h d'
    weight = sd.get("g_norm_swish_gate.weight", sd.get("g_norm.weight"))
    normed = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * weight
    g = (x @ sd["g_proj.weight"].T).view(b, n, heads, -1)
    return (normed * g * torch.sigmoid(g)).reshape(b, n, -1) @ sd["o_proj.weight"].T


@pytest.mark.parametrize("fuse_norm", [True, False])
def test_fla_checkpoint_gives_fla_forward(fuse_norm: bool) -> None:
    sd = _fla_state_dict(12, 3, 0.5, 2.0, 4, fuse_norm)
    m = GatedLinearAttention(12, 3, expand_k=0.5, expand_v=2.0, gate_low_rank_dim=4).double().eval()
    m.load_state_dict(convert_fla_gla_state_dict(sd))
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    torch.testing.assert_close(m(x), _fla_forward(sd, x, heads=3), atol=1e-12, rtol=1e-10)
    both = {"g_norm.weight": torch.ones(4), "g_norm_swish_gate.weight": torch.ones(4)}
    with pytest.raises(ValueError, match="both"):
        convert_fla_gla_state_dict(both)
