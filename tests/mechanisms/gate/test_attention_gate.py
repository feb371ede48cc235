"""Attention U-Net additive gates (2-D and 3-D): eq. 1-2 written per pixel, coarse gating, options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.mechanisms.gate.attention_gate import AttentionGate2d
from attnzoo.mechanisms.gate.attention_gate_3d import AttentionGate3d


def _pixelwise_alpha_2d(m: AttentionGate2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """alpha on g's grid from eq. 1: psi^T relu(W_x x_patch + W_g g + b_g) + b_psi, per grid cell."""
    s = m.sub_sample_factor
    b, _, hg, wg = g.shape
    wx = m.theta.weight  # (C_int, C, s0, s1)
    out = torch.empty(b, 1, hg, wg, dtype=x.dtype)
    for i in range(hg):
        for j in range(wg):
            patch = x[:, :, i * s[0] : (i + 1) * s[0], j * s[1] : (j + 1) * s[1]]
            t = torch.einsum("bcuv,kcuv->bk", patch, wx)
            p = g[:, :, i, j] @ m.phi.weight[:, :, 0, 0].T + m.phi.bias
            q = F.relu(t + p) @ m.psi.weight[0, :, 0, 0] + m.psi.bias
            out[:, 0, i, j] = torch.sigmoid(q)
    return out


def test_2d_matches_equations_without_transform() -> None:
    torch.manual_seed(0)
    m = AttentionGate2d(6, 10, inter_channels=4, output_transform=False).double()
    x = torch.randn(2, 6, 6, 8, dtype=torch.float64)
    g = torch.randn(2, 10, 3, 4, dtype=torch.float64)
    alpha = F.interpolate(_pixelwise_alpha_2d(m, x, g), size=(6, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(m.gate_coefficients(x, g), alpha, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(m(x, g), alpha * x, atol=1e-12, rtol=1e-10)


def test_output_transform_is_conv_bn_of_gated_features() -> None:
    torch.manual_seed(1)
    m = AttentionGate2d(8, 16).double().eval()
    x = torch.randn(1, 8, 5, 7, dtype=torch.float64)
    g = torch.randn(1, 16, 2, 3, dtype=torch.float64)
    conv, bn = m.W[0], m.W[1]
    expected = bn(conv(m.gate_coefficients(x, g) * x))
    torch.testing.assert_close(m(x, g), expected)
    assert m.inter_channels == 4 and m.theta.bias is None


def test_gating_signal_resized_to_theta_grid() -> None:
    """A gating signal at any coarser size gives phi(g) resized to theta(x)'s grid."""
    torch.manual_seed(2)
    m = AttentionGate2d(4, 4, output_transform=False).double()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    g = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    g_up = F.interpolate(g, size=(4, 4), mode="bilinear", align_corners=False)
    # phi is 1x1, so resizing g or phi(g) is the same linear map
    torch.testing.assert_close(m(x, g), m(x, g_up), atol=1e-12, rtol=1e-10)


def test_3d_gate_shapes_and_range() -> None:
    torch.manual_seed(3)
    m = AttentionGate3d(8, 12, sub_sample_factor=(1, 2, 2))
    x = torch.randn(2, 8, 3, 6, 5)
    g = torch.randn(2, 12, 3, 3, 2)
    alpha = m.gate_coefficients(x, g)
    assert alpha.shape == (2, 1, 3, 6, 5)
    assert bool(((alpha > 0) & (alpha < 1)).all())
    assert m(x, g).shape == x.shape


def test_3d_reduces_to_2d_on_a_single_slice() -> None:
    torch.manual_seed(4)
    m2 = AttentionGate2d(4, 6, output_transform=False).double()
    m3 = AttentionGate3d(4, 6, sub_sample_factor=(1, 2, 2), output_transform=False).double()
    m3.theta.weight.data = m2.theta.weight.data.unsqueeze(2)
    for a, b in ((m3.phi, m2.phi), (m3.psi, m2.psi)):
        a.weight.data = b.weight.data.unsqueeze(2)
        a.bias.data = b.bias.data.clone()
    x = torch.randn(1, 4, 6, 4, dtype=torch.float64)
    g = torch.randn(1, 6, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(m3(x.unsqueeze(2), g.unsqueeze(2)).squeeze(2), m2(x, g))


def test_errors() -> None:
    with pytest.raises(ValueError, match="sub_sample_factor"):
        AttentionGate2d(4, 4, sub_sample_factor=(2, 2, 2))
    with pytest.raises(ValueError, match="inter_channels"):
        AttentionGate2d(4, 4, inter_channels=0)
    m = AttentionGate2d(4, 4)
    with pytest.raises(ValueError, match="x spatial size"):
        m(torch.randn(1, 4, 1, 5), torch.randn(1, 4, 1, 2))
    with pytest.raises(ValueError, match="gate_channels"):
        m(torch.randn(1, 4, 4, 4), torch.randn(1, 3, 2, 2))
