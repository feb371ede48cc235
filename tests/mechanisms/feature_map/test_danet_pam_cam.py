"""DANet/MSGA position and channel attention: the official formulas written out, capture, fixtures."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.feature_map.danet_cam import ChannelSelfAttention
from attnzoo.mechanisms.feature_map.danet_pam import PositionAttention
from attnzoo.parity import fixture_cases, fixture_names, run_case


def _pam_reference(m: PositionAttention, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    q = m.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)
    k = m.key_conv(x).view(b, -1, h * w)
    attn = torch.softmax(torch.bmm(q, k), dim=-1)
    v = m.value_conv(x).view(b, -1, h * w)
    return m.gamma * torch.bmm(v, attn.permute(0, 2, 1)).view(b, c, h, w) + x


def _cam_reference(m: ChannelSelfAttention, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    flat = x.view(b, c, -1)
    energy = torch.bmm(flat, flat.permute(0, 2, 1))
    if m.energy_sign < 0:
        energy = energy.max(dim=-1, keepdim=True)[0] - energy
    attn = torch.softmax(energy, dim=-1)
    return m.gamma * torch.bmm(attn, flat).view(b, c, h, w) + x


@pytest.mark.parametrize("channels", [8, 20, 32])
def test_pam_matches_official_formula(channels: int) -> None:
    torch.manual_seed(0)
    m = PositionAttention(channels, gamma_init=0.7).double()
    x = torch.randn(2, channels, 3, 5, dtype=torch.float64)
    assert m.query_conv.out_channels == channels // 8
    torch.testing.assert_close(m(x), _pam_reference(m, x), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_cam_matches_official_formula(sign: float) -> None:
    torch.manual_seed(0)
    m = ChannelSelfAttention(12, energy_sign=sign, gamma_init=-0.4).double()
    x = 0.5 * torch.randn(2, 12, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), _cam_reference(m, x), atol=1e-12, rtol=1e-10)


def test_cam_weights_anti_correlated_channels() -> None:
    """The official form gives a channel's largest weight to its most anti-correlated channel."""
    base = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    x = torch.cat([base, -base, 0.1 * torch.randn(1, 1, 4, 4, dtype=torch.float64)], dim=1)
    m = ChannelSelfAttention(3).double()
    with attnzoo.capture(m) as cap:
        m(x)
    (rec,) = cap[""]
    assert rec.probs.shape == (1, 1, 3, 3)
    assert int(rec.probs[0, 0, 0].argmax()) == 1


def test_capture_shapes_and_identity_at_init() -> None:
    x = torch.randn(2, 16, 3, 5)
    pam = PositionAttention(16)
    torch.testing.assert_close(pam(x), x)  # gamma = 0 at init, as officially
    with attnzoo.capture(pam) as cap:
        pam(x)
    assert cap[""][0].probs.shape == (2, 1, 15, 15)
    torch.testing.assert_close(cap[""][0].probs.sum(-1), torch.ones(2, 1, 15))


def test_errors() -> None:
    with pytest.raises(ValueError, match="reduction"):
        PositionAttention(7)
    with pytest.raises(ValueError, match="energy_sign"):
        ChannelSelfAttention(8, energy_sign=0.5)
    with pytest.raises(ValueError, match="channels"):
        ChannelSelfAttention(8)(torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize("fixture", ["msga_pam", "msga_cam"])
def test_official_fixtures(fixture: str) -> None:
    if fixture not in fixture_names():
        pytest.skip(f"parity fixtures {fixture} not available")
    for case in fixture_cases(fixture):
        (out,) = run_case(case)
        torch.testing.assert_close(out, case.outputs[0], atol=case.atol, rtol=case.rtol)


def test_converter_rejects_foreign_checkpoint() -> None:
    from attnzoo import official

    with pytest.raises(ValueError, match="PAM_Module"):
        official.load("msga_pam", {"in_dim": 16}, {"gamma": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"query_conv\.weight"):
        sd = PositionAttention(16).state_dict()
        official.load("msga_pam", {"in_dim": 24}, sd)
