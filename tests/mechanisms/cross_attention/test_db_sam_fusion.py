"""DB-SAM fusion: float64 oracle of the stage equations (deformable sampling by a gather loop), the
official MSDeformAttn initialisation, key padding, grids, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomise

import attnzoo
from attnzoo.mechanisms.cross_attention.db_sam_fusion import DBSAMFusion, DeformableAttention


def _bilinear(img: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """img (d, H, W) read at normalised (x, y) arrays (...,), pixel centres at (j + .5)/W, zeros outside."""
    d, hh, ww = img.shape
    px, py = x * ww - 0.5, y * hh - 0.5
    x0, y0 = px.floor(), py.floor()
    out = torch.zeros(*x.shape, d, dtype=img.dtype)
    for cy in (y0, y0 + 1):
        for cx in (x0, x0 + 1):
            w = (1 - (px - cx).abs()) * (1 - (py - cy).abs())
            ok = (cx >= 0) & (cx < ww) & (cy >= 0) & (cy < hh)
            vals = img[:, cy.clamp(0, hh - 1).long(), cx.clamp(0, ww - 1).long()].movedim(0, -1)
            out = out + (w * ok)[..., None] * vals
    return out


def _msda(attn: DeformableAttention, q, q_shapes, v, v_shapes, padding=None) -> torch.Tensor:
    h, lv, p = attn.num_heads, attn.num_levels, attn.num_points
    val = v @ attn.value_proj.weight.T + attn.value_proj.bias
    if padding is not None:
        val = val * padding[..., None]
    b, n_q, c = q.shape
    d = c // h
    offs = (q @ attn.sampling_offsets.weight.T + attn.sampling_offsets.bias).view(b, n_q, h, lv, p, 2)
    logits = (q @ attn.attention_weights.weight.T + attn.attention_weights.bias).view(b, n_q, h, lv * p)
    a = logits.softmax(-1).view(b, n_q, h, lv, p)
    refs = []
    for hh, ww in q_shapes:
        for i in range(hh):
            for j in range(ww):
                refs.append(((j + 0.5) / ww, (i + 0.5) / hh))
    ref = torch.tensor(refs, dtype=q.dtype)
    out = torch.zeros(b, n_q, h, d, dtype=q.dtype)
    start = 0
    for lvl, (hh, ww) in enumerate(v_shapes):
        maps = val[:, start : start + hh * ww].transpose(1, 2).reshape(b, h, d, hh, ww)
        start += hh * ww
        x = ref[None, :, None, None, 0] + offs[:, :, :, lvl, :, 0] / ww
        y = ref[None, :, None, None, 1] + offs[:, :, :, lvl, :, 1] / hh
        for bi in range(b):
            for m in range(h):
                samples = _bilinear(maps[bi, m], x[bi, :, m], y[bi, :, m])  # (N_q, P, d)
                out[bi, :, m] += (a[bi, :, m, lvl, :, None] * samples).sum(1)
    return out.reshape(b, n_q, c) @ attn.output_proj.weight.T + attn.output_proj.bias


def _ln(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _ffn(ffn, x, shapes) -> torch.Tensor:
    h = x @ ffn.fc1.weight.T + ffn.fc1.bias
    parts, start = [], 0
    for hh, ww in shapes:
        g = h[:, start : start + hh * ww].transpose(1, 2).reshape(h.shape[0], -1, hh, ww)
        start += hh * ww
        conv = F.conv2d(g, ffn.dwconv.weight, ffn.dwconv.bias, padding=1, groups=g.shape[1])
        parts.append(conv.flatten(2).transpose(1, 2))
    return F.gelu(torch.cat(parts, 1)) @ ffn.fc2.weight.T + ffn.fc2.bias


def _block(blk, q, q_shapes, v, v_shapes, padding=None) -> torch.Tensor:
    x = q + _msda(blk.attn, _ln(q, blk.query_norm), q_shapes, _ln(v, blk.value_norm), v_shapes, padding)
    return x + _ffn(blk.ffn, _ln(x, blk.ffn_norm), q_shapes)


def _oracle(m: DBSAMFusion, x, ctx, q_shape, c_shape, mask=None) -> torch.Tensor:
    b, _, c = x.shape
    lv = m.levels
    levels = [ctx[..., i * c : (i + 1) * c] + m.level_embed[i] for i in range(lv)]
    cab = m.cab
    g = _ln(x, cab.norm).transpose(1, 2).reshape(b, c, *q_shape)
    y = F.gelu(F.conv2d(g, cab.conv_dw.weight, padding=1, groups=c))
    se = torch.sigmoid(
        F.conv2d(F.gelu(F.conv2d(y.mean((2, 3), keepdim=True), cab.se_fc1.weight)), cab.se_fc2.weight)
    )
    v = x + F.conv2d(y * se, cab.conv_pw.weight).flatten(2).transpose(1, 2)
    padding = None if mask is None else mask.repeat(1, lv).to(x.dtype)
    x_new = _block(m.vit_cross, v, [q_shape], torch.cat(levels, 1), [c_shape] * lv, padding)
    conv = _block(m.conv_cross, torch.cat(levels, 1), [c_shape] * lv, v, [q_shape]).chunk(lv, 1)
    stacked = torch.cat([t.transpose(1, 2).reshape(b, c, *c_shape) for t in conv], 1)
    u = F.conv2d(stacked, m.merge.weight, m.merge.bias)
    if q_shape != c_shape:
        u = F.interpolate(u, size=q_shape, mode="bilinear", align_corners=False)
    u = u.flatten(2).transpose(1, 2)
    f = m.fusion
    s = _ln(u, f.spatial_norm) @ f.spatial.weight.T
    ch = F.silu(x_new.mean(1, keepdim=True) @ f.channel_fc1.weight.T)
    ch = _ln(ch, f.channel_norm) @ f.channel_fc2.weight.T
    gate = torch.sigmoid(s + ch)
    out = gate * u + (1 - gate) * x_new
    hid = F.gelu(_ln(out, f.ffn_norm) @ f.ffn_fc1.weight.T + f.ffn_fc1.bias)
    return out + hid @ f.ffn_fc2.weight.T + f.ffn_fc2.bias


@pytest.mark.parametrize(("levels", "q_shape", "c_shape"), [(2, (3, 4), (3, 4)), (1, (4, 3), (2, 5))])
def test_matches_equation_oracle(levels: int, q_shape: tuple[int, int], c_shape: tuple[int, int]) -> None:
    m = DBSAMFusion(16, 2, levels=levels, num_points=3, reduction=4).double().eval()
    randomise(m)
    x = torch.randn(2, q_shape[0] * q_shape[1], 16, dtype=torch.float64)
    ctx = torch.randn(2, c_shape[0] * c_shape[1], levels * 16, dtype=torch.float64)
    out = m(x, ctx, size=c_shape, query_size=q_shape)
    torch.testing.assert_close(out, _oracle(m, x, ctx, q_shape, c_shape), atol=1e-10, rtol=1e-8)


def test_key_padding_zeroes_conv_values_for_vit_queries() -> None:
    m = DBSAMFusion(16, 2, levels=1, num_points=2, reduction=4).double().eval()
    randomise(m)
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    ctx = torch.randn(1, 9, 16, dtype=torch.float64)
    mask = torch.ones(1, 9, dtype=torch.bool)
    mask[0, 4:] = False
    out = m(x, ctx, size=(3, 3), mask=mask)
    torch.testing.assert_close(out, _oracle(m, x, ctx, (3, 3), (3, 3), mask), atol=1e-10, rtol=1e-8)
    v = torch.randn(1, 9, 16, dtype=torch.float64)
    q = torch.randn(1, 9, 16, dtype=torch.float64)
    v2 = v.clone()
    v2[:, 4:] = 50.0
    ref = torch.rand(9, 2, dtype=torch.float64)
    attn = m.vit_cross.attn
    torch.testing.assert_close(attn(q, ref, v, [(3, 3)], mask), attn(q, ref, v2, [(3, 3)], mask))


def test_official_initialisation() -> None:
    m = DBSAMFusion(16, 4, levels=2, num_points=3, reduction=4)
    attn = m.vit_cross.attn
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    for head in range(4):
        theta = 2 * math.pi * head / 4
        ring = torch.tensor([math.cos(theta), math.sin(theta)])
        ring = ring / ring.abs().max()
        for k in range(3):
            torch.testing.assert_close(bias[head, 1, k], ring * (k + 1))
    assert torch.count_nonzero(m.level_embed) == 0


def test_equal_grids_need_no_query_size_and_cab_is_optional() -> None:
    m = attnzoo.create("db_sam", dim=8, num_heads=2, reduction=2, channel_attention=False).double()
    x, ctx = torch.randn(2, 6, 8, dtype=torch.float64), torch.randn(2, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x, ctx, size=(2, 3)), m(x, ctx, size=(2, 3), query_size=(2, 3)))
    assert m.cab is None


def test_errors() -> None:
    m = DBSAMFusion(8, 2, levels=2, reduction=2)
    x, ctx = torch.randn(1, 12, 8), torch.randn(1, 6, 16)
    with pytest.raises(ValueError, match="query_size"):
        m(x, ctx, size=(2, 3))
    with pytest.raises(ValueError, match="query_size"):
        m(x, ctx, size=(2, 3), query_size=(3, 3))
    with pytest.raises(ValueError, match="context"):
        m(x, torch.randn(1, 6, 8), size=(2, 3), query_size=(3, 4))
    with pytest.raises(ValueError, match="num_heads"):
        DBSAMFusion(10, 4)
    with pytest.raises(ValueError, match="reduction"):
        DBSAMFusion(8, 2, reduction=9)
    with pytest.raises(TypeError, match="levels"):
        DBSAMFusion(8, 2, levels=1.5)
