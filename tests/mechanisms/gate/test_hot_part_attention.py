"""HOT part attention: per-part loop written out, coarse guidance, contrastive features, capture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.mechanisms.gate.hot_part_attention import HOTPartAttention


def _model(**kw: object) -> HOTPartAttention:
    m = HOTPartAttention(16, 3, 8, **kw).double()  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    for p in m.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2
    for name, b in m.named_buffers():
        if name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=g) * 0.2)
    return m.eval()


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d, sl: slice) -> torch.Tensor:
    mean, var = bn.running_mean[sl], bn.running_var[sl]
    scale = bn.weight[sl] / torch.sqrt(var + bn.eps)
    return (x - mean[:, None, None]) * scale[:, None, None] + bn.bias[sl][:, None, None]


def test_matches_per_part_loop() -> None:
    m = _model()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    g = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    p = F.conv2d(torch.relu(_bn(F.conv2d(g, m.part_conv.weight, padding=1), m.part_bn, slice(None))),
                 m.part_head.weight, m.part_head.bias)
    a = p.softmax(dim=1)
    feats = []
    for k in range(3):
        w = m.branch_conv.weight[2 * k : 2 * k + 2]
        conv = F.conv2d(x * a[:, k : k + 1], w, padding=1)
        feats.append(torch.relu(_bn(conv, m.branch_bn, slice(2 * k, 2 * k + 2))))
    want = F.conv2d(torch.cat(feats, 1), m.fuse.weight, m.fuse.bias)
    torch.testing.assert_close(m(x, g), want)
    parts = m.parts(x, g)
    torch.testing.assert_close(parts.part_logits, p)
    torch.testing.assert_close(parts.part_features, torch.stack([f.sum((2, 3)) for f in feats], 1))


def test_coarse_guidance_is_upsampled() -> None:
    m = _model()
    x = torch.randn(2, 16, 6, 8, dtype=torch.float64)
    g = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    out = m(x, g)
    assert out.shape == (2, 16, 6, 8)
    with attnzoo.capture(m) as cap:
        m(x, g)
    probs = cap[""][0].probs
    assert probs.shape == (2, 1, 48, 3)
    up = F.interpolate(m.part_logits(g), size=(6, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(probs[:, 0], up.softmax(1).flatten(2).transpose(1, 2))


def test_arguments() -> None:
    with pytest.raises(ValueError, match="channels must be >= 8"):
        HOTPartAttention(4, 2)
    with pytest.raises(ValueError, match="num_parts"):
        HOTPartAttention(16, 0)
    m = HOTPartAttention(16, 4, part_channels=3, out_channels=4)
    assert m(torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)).shape == (2, 4, 4, 4)
