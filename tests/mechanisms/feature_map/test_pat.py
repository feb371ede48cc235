"""PAT_ch / PAT_sp / PAT_sf: equations written out, partial-channel structure, iRPE buckets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.mechanisms.feature_map.pat_ch import PartialChannelAttention
from attnzoo.mechanisms.feature_map.pat_sf import PartialSelfAttention, irpe_euclidean_buckets
from attnzoo.mechanisms.feature_map.pat_sp import PartialSpatialAttention


def _randomise(m: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    for p in m.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3
    for name, b in m.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=g) * 0.2)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return m.eval()


def _bn(x: torch.Tensor, bn: torch.nn.Module) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = bn.weight.view(shape) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def test_pat_ch_equations() -> None:
    m = _randomise(PartialChannelAttention(12, 3).double())
    x = torch.randn(2, 12, 5, 6, dtype=torch.float64)
    x1, x2 = x[:, :4], x[:, 4:]
    mean = x2.mean(dim=(2, 3))
    std = torch.sqrt(((x2 - mean[..., None, None]) ** 2).sum(dim=(2, 3)) / (30 - 1))
    z = _bn(torch.cat([mean, std], -1) @ m.style_fc.weight.T, m.style_bn)
    g = torch.clamp(z + 3, 0, 6) / 6
    conv = F.conv2d(x1, m.partial_conv.weight, padding=1)
    want = torch.cat([conv, _bn(x2 * g[..., None, None], m.norm)], 1)
    torch.testing.assert_close(m(x), want)


def test_pat_ch_needs_two_positions() -> None:
    m = PartialChannelAttention(8, 4).eval()
    with pytest.raises(ValueError, match="2 positions"):
        m(torch.randn(2, 8, 1, 1))


@pytest.mark.parametrize("num_heads", [1, 6])
def test_pat_sp_equations(num_heads: int) -> None:
    m = _randomise(PartialSpatialAttention(8, 0.25, num_heads).double())
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    x1, x2 = x[:, :6], x[:, 6:]
    a = torch.clamp(F.conv2d(x1, m.attn.weight) + 3, 0, 6) / 6
    want = torch.cat([_bn(x1 * a, m.attn_norm), F.conv2d(_bn(x2, m.conv_norm), m.conv.weight)], 1)
    torch.testing.assert_close(m(x), want)
    with pytest.raises(ValueError, match="num_heads"):
        PartialSpatialAttention(8, 0.25, 2)
    with pytest.raises(ValueError, match="partial"):
        PartialSpatialAttention(8, 0.05)


def _bucket_reference(dr: int, dc: int, ratio: float = 20.0) -> int:
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    d = float(round(math.sqrt(dr * dr + dc * dc)))
    if d <= alpha:
        return int(d + beta)
    t = torch.tensor(alpha, dtype=torch.float32) + torch.log(torch.tensor(d / alpha, dtype=torch.float32)) / (
        math.log(gamma / alpha)
    ) * (beta - alpha)
    return int(min(float(t.round()), beta) + beta)


def test_irpe_buckets_match_piecewise_index() -> None:
    for h, w in ((5, 7), (3, 90)):
        got = irpe_euclidean_buckets(h, w)
        assert got.shape == (h * w, h * w)
        for i in range(0, h * w, 7):
            for j in range(0, h * w, 5):
                assert int(got[i, j]) == _bucket_reference(i // w - j // w, i % w - j % w)
    far = irpe_euclidean_buckets(1, 400)
    assert int(far.max()) == 80 and int(far.min()) == 40


def test_pat_sf_equations_and_capture() -> None:
    m = _randomise(PartialSelfAttention(12, 4, 3).double())
    x = torch.randn(2, 12, 4, 5, dtype=torch.float64)
    x1, x2 = x[:, :3], x[:, 3:]
    t = F.layer_norm(x2.flatten(2).transpose(1, 2), (9,), m.norm.weight, m.norm.bias, 1e-6)
    q, k, v = (t @ m.qkv.weight.T).reshape(2, 20, 3, 3, 3).permute(2, 0, 3, 1, 4)
    logits = (q * 3**-0.5) @ k.transpose(-1, -2) + m.rpe_table[:, irpe_euclidean_buckets(4, 5)]
    o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 20, 9) @ m.proj.weight.T + m.proj.bias
    conv = F.conv2d(x1, m.partial_conv.weight, padding=1)
    want = torch.cat([conv, o.transpose(1, 2).reshape(2, 9, 4, 5)], 1)
    torch.testing.assert_close(m(x), want)
    with attnzoo.capture(m) as cap:
        m(x)
    torch.testing.assert_close(cap[""][0].probs, logits.softmax(-1))


def test_partial_structure() -> None:
    """The convolved channels depend only on the first C/n input channels."""
    for m in (PartialChannelAttention(8, 4), PartialSelfAttention(8, 4, 2)):
        _randomise(m)
        x = torch.randn(2, 8, 4, 4)
        y = x.clone()
        y[:, 2:] += 1.0
        torch.testing.assert_close(m(x)[:, :2], m(y)[:, :2])
    with pytest.raises(ValueError, match="num_heads"):
        PartialSelfAttention(8, 4, 4)
    with pytest.raises(ValueError, match="n_div"):
        PartialChannelAttention(8, 1)
