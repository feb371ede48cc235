"""DFFreq window attention: per-window oracle (channel attention + pixel-MLP gate), locality,
channel-sized attention maps, padding rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomise_seeded

import attnzoo
from attnzoo.mechanisms.token_mixer.dffreq_window_attention import DFFreqWindowAttention


def _oracle(m: DFFreqWindowAttention, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float64 reference looping over windows and heads with an explicit softmax."""
    b, _, c = x.shape
    hh, ww = size
    ws, heads = m.window_size, m.num_heads
    ch = c // heads
    f = x.transpose(1, 2).reshape(b, c, hh, ww)
    qkv = m.qkv_dwconv(m.qkv(f))
    ph, pw = -hh % ws, -ww % ws
    qkv = F.pad(qkv, (0, pw, 0, ph), mode="reflect")
    q_map, k_map, v_map = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    out = torch.zeros(b, c, hh + ph, ww + pw, dtype=x.dtype)
    for i in range(0, hh + ph, ws):
        for j in range(0, ww + pw, ws):
            for h in range(heads):
                chans = slice(h * ch, (h + 1) * ch)
                q = q_map[:, chans, i : i + ws, j : j + ws].reshape(b, ch, ws * ws)
                k = k_map[:, chans, i : i + ws, j : j + ws].reshape(b, ch, ws * ws)
                v = v_map[:, chans, i : i + ws, j : j + ws].reshape(b, ch, ws * ws)
                attn = torch.softmax(q @ k.transpose(1, 2) * m.temperature[h], dim=-1)
                gate = F.gelu(v @ m.pixel_mlp.weight.T + m.pixel_mlp.bias)
                out[:, chans, i : i + ws, j : j + ws] = ((attn @ v) * gate).reshape(b, ch, ws, ws)
    out = m.project_out(out[:, :, :hh, :ww])
    return out.flatten(2).transpose(1, 2)


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        ({"dim": 8, "num_heads": 2, "window_size": 4, "bias": True}, (6, 9)),
        ({"dim": 6, "num_heads": 3, "window_size": 3, "padding_mode": "reflect"}, (5, 4)),
        ({"dim": 4, "num_heads": 1, "window_size": 2}, (4, 6)),
    ],
)
def test_matches_window_oracle(kwargs: dict, size: tuple[int, int]) -> None:
    m = DFFreqWindowAttention(**kwargs).double().eval()
    randomise_seeded(m)
    with torch.no_grad():
        m.temperature[0] = -abs(m.temperature[0])  # the official temperature may be negative
    x = torch.randn(2, size[0] * size[1], m.dim, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x, size=size), _oracle(m, x, size), atol=1e-12, rtol=1e-10)


def test_attention_is_over_channels_per_window() -> None:
    m = DFFreqWindowAttention(8, 2, window_size=4).eval()
    with attnzoo.capture(m) as cap:
        m(torch.randn(3, 8 * 12, 8), size=(8, 12))
    (rec,) = cap.records
    assert tuple(rec.probs.shape) == (3 * 2 * 3, 2, 4, 4)  # (B * windows, heads, C/h, C/h)


def test_output_is_local_to_the_window_and_conv_halo() -> None:
    """Without padding, a pixel only reaches its own window and, through the 3x3 depthwise conv,
    the windows that touch it."""
    m = DFFreqWindowAttention(4, 1, window_size=4).double().eval()
    randomise_seeded(m)
    size = (12, 12)
    x = torch.randn(1, 144, 4, dtype=torch.float64)
    base = m(x, size=size).reshape(1, 12, 12, 4)
    x2 = x.clone().reshape(1, 12, 12, 4)
    x2[0, 1, 1] += 1.0  # interior of window (0, 0), not on its border
    out = m(x2.reshape(1, 144, 4), size=size).reshape(1, 12, 12, 4)
    changed = (out - base).abs().amax(dim=-1)[0] > 0
    assert changed[:4, :4].any()
    assert not changed[4:].any() and not changed[:, 4:].any()


def test_grid_too_small_for_reflect_padding_is_rejected() -> None:
    m = DFFreqWindowAttention(4, 1, window_size=8)
    with pytest.raises(ValueError, match="window_size"):
        m(torch.randn(1, 3 * 9, 4), size=(3, 9))


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"window_size": 0}, "window_size"),
        ({"padding_mode": "mirror"}, "padding_mode"),
        ({"num_heads": 3}, "num_heads"),
    ],
)
def test_bad_config(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        DFFreqWindowAttention(8, **{"num_heads": 2, **kwargs})
