"""SDANet selective dense attention: the official forward transcribed in float64, levels, capture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.mechanisms.feature_map.sdanet import SelectiveDenseAttention


def _model(channels: int = 16, levels: int = 4, refine: int = 1, hidden: int = 8) -> SelectiveDenseAttention:
    m = SelectiveDenseAttention(channels, levels, refine, hidden).double()
    g = torch.Generator().manual_seed(0)
    for p in m.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3
    bn = m.squeeze[1]
    bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.2)
    bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
    return m.eval()


def _official_style(m: SelectiveDenseAttention, pyramid: list[torch.Tensor]) -> torch.Tensor:
    """The official selective_attention forward, one conv per level, written out."""
    r, lv, c = m.refine_level, m.num_levels, m.channels
    size = pyramid[r].shape[-2:]
    gathered = []
    for i, p in enumerate(pyramid):
        if i < r:
            p = F.adaptive_max_pool2d(p, size)
        elif i > r:
            p = F.interpolate(p, size=size, mode="nearest")
        gathered.append(p)
    feats = torch.cat(gathered, 1).view(-1, lv, c, *size)
    u = feats.sum(1)
    conv, bn = m.squeeze[0], m.squeeze[1]
    s = F.adaptive_avg_pool2d(u, 1)
    z = F.batch_norm(F.conv2d(s, conv.weight), bn.running_mean, bn.running_var, bn.weight, bn.bias).relu()
    wt, bs = m.excite.weight, m.excite.bias
    vecs = [F.conv2d(z, wt[i * c : (i + 1) * c, :, None, None], bs[i * c : (i + 1) * c]) for i in range(lv)]
    a = torch.cat(vecs, 1).view(-1, lv, c, 1, 1).softmax(1)
    feats_c = (feats * a).sum(1)
    desc = torch.cat([u.mean(1, keepdim=True), u.max(1, keepdim=True)[0]], 1)
    maps = [F.conv2d(desc, m.spatial.weight[i : i + 1], padding=m.spatial.padding) for i in range(lv)]
    b = torch.cat(maps, 1).softmax(1).unsqueeze(2)
    fused = feats_c + (feats * b).sum(1)
    # global-context block: softmax over positions of a 1x1 conv, weighted sum, channel_add MLP
    n, _, h, w = fused.shape
    mask = F.conv2d(fused, m.context_mask.weight, m.context_mask.bias).view(n, 1, h * w).softmax(2)
    context = (fused.view(n, c, h * w) @ mask.transpose(1, 2)).view(n, c, 1, 1)
    bsf = fused + m.context_add(context)
    return F.adaptive_max_pool2d(bsf, size) + pyramid[r]


@pytest.mark.parametrize("refine", [0, 1, 3])
def test_matches_official_forward(refine: int) -> None:
    m = _model(refine=refine)
    sizes = [(12, 14), (6, 7), (3, 4), (2, 2)]
    pyramid = [torch.randn(2, 16, *s, dtype=torch.float64) for s in sizes]
    others = [p for i, p in enumerate(pyramid) if i != refine]
    out = m(pyramid[refine], levels=others)
    torch.testing.assert_close(out, _official_style(m, pyramid))


def test_capture_and_single_level() -> None:
    m = _model(levels=3, refine=1)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    levels = [torch.randn(2, 16, 10, 14, dtype=torch.float64), torch.randn(2, 16, 3, 4, dtype=torch.float64)]
    with attnzoo.capture(m) as cap:
        m(x, levels=levels)
    kinds = [r.kind for r in cap[""]]
    assert kinds == ["level_channel", "level_spatial", "softmax"]
    torch.testing.assert_close(cap[""][1].probs.sum(-1), torch.ones(2, 1, 35, dtype=torch.float64))
    single = SelectiveDenseAttention(16, 1, 0, 8)
    assert single(torch.randn(2, 16, 4, 5)).shape == (2, 16, 4, 5)


def test_bad_levels() -> None:
    m = _model(levels=3, refine=1)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="other 2 pyramid maps"):
        m(x)
    with pytest.raises(ValueError, match=r"levels\[1\]"):
        bad = torch.randn(2, 8, 3, 4, dtype=torch.float64)
        m(x, levels=[torch.randn(2, 16, 10, 14, dtype=torch.float64), bad])
    with pytest.raises(ValueError, match="refine_level"):
        SelectiveDenseAttention(16, 3, 3)


def test_batch_independence() -> None:
    m = _model(levels=3, refine=1)
    x = torch.randn(3, 16, 5, 7, dtype=torch.float64)
    levels = [torch.randn(3, 16, 10, 14, dtype=torch.float64), torch.randn(3, 16, 3, 4, dtype=torch.float64)]
    full = m(x, levels=levels)
    for i in range(3):
        one = m(x[i : i + 1], levels=[lv[i : i + 1] for lv in levels])
        torch.testing.assert_close(one, full[i : i + 1])
