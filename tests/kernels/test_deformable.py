"""Multi-scale deformable attention: grid_sample path and gather reference vs a scalar float64 loop."""

from __future__ import annotations

import math

import pytest
import torch

from attnzoo.kernels.deformable import ms_deform_attn, ms_deform_attn_reference, reference_points


def _loop(
    value: torch.Tensor, shapes: list[tuple[int, int]], loc: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """out[b, q, m] = sum_l,k A * bilinear(V_l[m], p), pixel (i, j) centred at ((j + .5)/W, (i + .5)/H),
    zero outside, one sample at a time."""
    b, _, h, d = value.shape
    n_q = loc.shape[1]
    out = torch.zeros(b, n_q, h, d, dtype=torch.float64)
    starts = [0]
    for hh, ww in shapes:
        starts.append(starts[-1] + hh * ww)
    for bi in range(b):
        for q in range(n_q):
            for m in range(h):
                for lv, (hh, ww) in enumerate(shapes):
                    for k in range(loc.shape[4]):
                        x = float(loc[bi, q, m, lv, k, 0]) * ww - 0.5
                        y = float(loc[bi, q, m, lv, k, 1]) * hh - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        for cy, cx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= cy < hh and 0 <= cx < ww:
                                w = (1 - abs(x - cx)) * (1 - abs(y - cy))
                                pix = value[bi, starts[lv] + cy * ww + cx, m]
                                out[bi, q, m] += float(a[bi, q, m, lv, k]) * w * pix
    return out.reshape(b, n_q, h * d)


@pytest.mark.parametrize("shapes", [[(3, 4)], [(4, 5), (2, 3), (1, 1)]])
def test_matches_scalar_loop(shapes: list[tuple[int, int]]) -> None:
    g = torch.Generator().manual_seed(0)
    b, n_q, h, d, p = 2, 5, 2, 3, 3
    s = sum(hh * ww for hh, ww in shapes)
    value = torch.randn(b, s, h, d, generator=g, dtype=torch.float64)
    loc = torch.rand(b, n_q, h, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    a = torch.randn(b, n_q, h, len(shapes) * p, generator=g, dtype=torch.float64).softmax(-1)
    a = a.view(b, n_q, h, len(shapes), p)
    expected = _loop(value, shapes, loc, a)
    for fn in (ms_deform_attn, ms_deform_attn_reference):
        torch.testing.assert_close(fn(value, shapes, loc, a), expected, atol=1e-12, rtol=1e-10)


def test_pixel_centres_read_the_pixel() -> None:
    shapes = [(3, 4), (2, 2)]
    value = torch.randn(1, 16, 1, 2, dtype=torch.float64)
    ref = reference_points(shapes, dtype=torch.float64)
    assert ref.shape == (16, 2)
    loc = torch.zeros(1, 16, 1, 2, 1, 2, dtype=torch.float64)
    a = torch.zeros(1, 16, 1, 2, 1, dtype=torch.float64)
    loc[0, :12, 0, 0, 0] = ref[:12]
    loc[0, 12:, 0, 1, 0] = ref[12:]
    a[0, :12, 0, 0] = 1.0
    a[0, 12:, 0, 1] = 1.0
    torch.testing.assert_close(ms_deform_attn(value, shapes, loc, a), value[:, :, 0], atol=1e-12, rtol=0)


def test_gradients_match_reference() -> None:
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 3), (2, 4)]
    value = torch.randn(1, 17, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    loc = (torch.rand(1, 4, 2, 2, 2, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    a = torch.rand(1, 4, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    grads = [
        torch.autograd.grad(fn(value, shapes, loc, a).sum(), (value, loc, a))
        for fn in (ms_deform_attn, ms_deform_attn_reference)
    ]
    for fast, ref in zip(*grads, strict=True):
        torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-8)


def test_errors() -> None:
    value = torch.randn(1, 12, 2, 3)
    with pytest.raises(ValueError, match="level shapes"):
        ms_deform_attn(value, [(3, 3)], torch.rand(1, 2, 2, 1, 1, 2), torch.rand(1, 2, 2, 1, 1))
    with pytest.raises(ValueError, match="locations"):
        ms_deform_attn(value, [(3, 4)], torch.rand(1, 2, 2, 2, 1, 2), torch.rand(1, 2, 2, 2, 1))
