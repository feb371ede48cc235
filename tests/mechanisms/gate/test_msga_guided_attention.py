"""MSGA guided self-attention block: wiring against the official DAF_stack formulas, sizes, losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.mechanisms.gate.msga_guided_attention import MultiScaleGuidedAttention


def _randomise(m: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for p in m.parameters():
        p.data = 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype)
    for name, b in m.named_buffers():
        if name.endswith("running_var"):
            b.data = 0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype)
        elif name.endswith("running_mean"):
            b.data = 0.2 * torch.randn(b.shape, generator=g, dtype=b.dtype)


def _official_step(step: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """One step as DAF_stack writes it: conv8((cam(z) + pam(z)) * conv_sem(semanticModule(z)[1]))."""
    sem = step.semantic
    enc1 = sem.enc1(z)
    dec2 = sem.dec2(sem.enc2(enc1))
    dec1 = sem.dec1(F.interpolate(dec2, enc1.size()[2:], mode="bilinear"))
    return step.fuse((step.cam(z) + step.pam(z)) * step.conv_sem(dec1))


def test_matches_official_wiring_on_divisible_sizes() -> None:
    m = MultiScaleGuidedAttention(8).double().eval()
    _randomise(m)
    x = torch.randn(2, 8, 8, 12, dtype=torch.float64)
    g = torch.randn(2, 8, 8, 12, dtype=torch.float64)
    a1 = _official_step(m.step1, torch.cat((x, g), 1))
    a2 = _official_step(m.step2, torch.cat((x, a1 * g), 1))
    aux = m.forward_with_aux(x, g)
    torch.testing.assert_close(aux.attention, a1, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(m(x, g), a2, atol=1e-12, rtol=1e-10)


def test_coarse_guide_is_resized_bilinearly() -> None:
    m = MultiScaleGuidedAttention(8, gamma_init=0.3).double().eval()
    x = torch.randn(1, 8, 5, 7, dtype=torch.float64)
    g = torch.randn(1, 8, 2, 3, dtype=torch.float64)
    up = F.interpolate(g, size=(5, 7), mode="bilinear", align_corners=False)
    torch.testing.assert_close(m(x, g), m(x, up))


@pytest.mark.parametrize("size", [(5, 7), (8, 8), (6, 10)])
def test_aux_shapes_and_losses(size: tuple[int, int]) -> None:
    m = MultiScaleGuidedAttention(8, gamma_init=0.3)
    x = torch.randn(2, 8, *size)
    g = torch.randn(2, 8, *size)
    aux = m.forward_with_aux(x, g)
    assert aux.out.shape == x.shape and aux.attention.shape == x.shape
    h4, w4 = -(-size[0] // 4), -(-size[1] // 4)
    for z, r, e in zip(aux.inputs, aux.reconstructions, aux.encodings, strict=True):
        assert z.shape == r.shape == (2, 16, *size)
        assert e.shape == (2, 64, h4, w4)
    semantic, rec = m.guided_losses(aux)
    (semantic + rec + aux.out.sum()).backward()
    assert all(p.grad is not None for p in m.step1.semantic.parameters())


def test_errors() -> None:
    with pytest.raises(ValueError, match="channels"):
        MultiScaleGuidedAttention(4)
    m = MultiScaleGuidedAttention(8)
    with pytest.raises(ValueError, match="g"):
        m.forward_with_aux(torch.randn(1, 8, 4, 4), torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match="gate_channels"):
        m(torch.randn(1, 8, 4, 4), torch.randn(1, 4, 4, 4))
