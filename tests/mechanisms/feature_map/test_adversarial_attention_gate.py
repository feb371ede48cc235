"""Multi-scale adversarial attention gate: the paper's gate per pixel, the official source wiring."""

from __future__ import annotations

import pytest
import torch

from attnzoo.mechanisms.feature_map.adversarial_attention_gate import AdversarialAttentionGate


def test_matches_equations_per_pixel() -> None:
    torch.manual_seed(0)
    m = AdversarialAttentionGate(6, 4).double()
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    w, b = m.conv.weight[:, :, 0, 0], m.conv.bias
    expected = torch.empty_like(x)
    for i in range(3):
        for j in range(5):
            logits = x[:, :, i, j] @ w.T + b  # (B, K)
            probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
            expected[:, :, i, j] = x[:, :, i, j] * (1.0 - probs[:, :1])
    torch.testing.assert_close(m(x), expected, atol=1e-12, rtol=1e-10)


def test_official_wiring_map_from_source() -> None:
    """TF decoder brick: segmentation from conv2_act, gate applied to conv3_act."""
    torch.manual_seed(1)
    m = AdversarialAttentionGate(8, 3)
    conv2_act, conv3_act = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    gated, s = m.gate_and_segmentation(conv3_act, conv2_act)
    assert s.shape == (2, 3, 4, 4)
    torch.testing.assert_close(s.sum(dim=1), torch.ones(2, 4, 4))
    torch.testing.assert_close(gated, conv3_act * (1 - s[:, :1]))
    gated_self, _ = m.gate_and_segmentation(conv3_act)
    torch.testing.assert_close(gated_self, m(conv3_act))


def test_gate_follows_background_logit() -> None:
    m = AdversarialAttentionGate(2, 2)
    with torch.no_grad():
        m.conv.weight.zero_()
        m.conv.bias.copy_(torch.tensor([20.0, 0.0]))  # everything background
    x = torch.randn(1, 2, 3, 3)
    with torch.no_grad():
        assert float(m(x).abs().max()) < 1e-6 * float(x.abs().max())


def test_errors() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        AdversarialAttentionGate(8, 1)
    m = AdversarialAttentionGate(8, 3)
    with pytest.raises(ValueError, match="source"):
        m.gate_and_segmentation(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 5))
