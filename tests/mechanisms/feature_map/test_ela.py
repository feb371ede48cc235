"""ELA: the paper's equations in float64, the T/B/S/L table, and its shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.mechanisms.feature_map.ela import ELA_VARIANTS, EfficientLocalAttention


def _reference(x: torch.Tensor, m: EfficientLocalAttention) -> torch.Tensor:
    """Eq. 5-7 written out with functional ops."""
    conv_w = m.conv if m.conv_w is None else m.conv_w
    gn_w = m.gn if m.gn_w is None else m.gn_w

    def encode(z: torch.Tensor, conv: torch.nn.Conv1d, gn: torch.nn.GroupNorm) -> torch.Tensor:
        z = F.conv1d(z, conv.weight, padding=conv.kernel_size[0] // 2, groups=conv.groups)
        return torch.sigmoid(F.group_norm(z, gn.num_groups, gn.weight, gn.bias, gn.eps))

    h, w = x.shape[2:]
    y_h = encode(x.sum(dim=3) / w, m.conv, m.gn)
    y_w = encode(x.sum(dim=2) / h, conv_w, gn_w)
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = x[:, :, i, j] * y_h[:, :, i] * y_w[:, :, j]
    return out


@pytest.mark.parametrize("variant", sorted(ELA_VARIANTS))
@pytest.mark.parametrize("shared", [True, False])
def test_matches_equations(variant: str, shared: bool) -> None:
    torch.manual_seed(0)
    m = EfficientLocalAttention(32, variant, shared=shared).double()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 32, 5, 9, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(x, m), atol=1e-12, rtol=1e-10)


def test_variant_table() -> None:
    c = 64
    for variant, (k, per_group, groups) in ELA_VARIANTS.items():
        m = EfficientLocalAttention(c, variant)
        assert m.conv.kernel_size == (k,)
        assert m.conv.groups == c // per_group
        assert m.gn.num_groups == groups
        # conv weight (C, per_group, k) + GroupNorm affine (2C), shared between the two axes
        assert sum(p.numel() for p in m.parameters()) == c * per_group * k + 2 * c
    assert (ELA_VARIANTS["T"], ELA_VARIANTS["B"]) == ((5, 1, 32), (7, 1, 16))
    assert (ELA_VARIANTS["S"], ELA_VARIANTS["L"]) == ((5, 8, 16), (7, 8, 16))


def test_unshared_doubles_parameters() -> None:
    shared = EfficientLocalAttention(32, "S")
    separate = EfficientLocalAttention(32, "S", shared=False)
    n = sum(p.numel() for p in shared.parameters())
    assert sum(p.numel() for p in separate.parameters()) == 2 * n
    assert set(shared.state_dict()) == {"conv.weight", "gn.weight", "gn.bias"}


def test_gate_orientation_non_square() -> None:
    """Row gate multiplies rows and column gate multiplies columns (no transposition)."""
    torch.manual_seed(1)
    m = EfficientLocalAttention(16, "B").double().eval()
    x = torch.randn(1, 16, 3, 6, dtype=torch.float64)
    y_h, y_w = m.gates(x)
    assert y_h.shape == (1, 16, 3) and y_w.shape == (1, 16, 6)
    torch.testing.assert_close(m(x), x * y_h[..., :, None] * y_w[..., None, :])


def test_no_quadratic_tensor() -> None:
    """Only strip-sized gates are formed: nothing of size (HW)^2 or C^2 HW."""
    m = EfficientLocalAttention(32, "T")
    x = torch.randn(1, 32, 12, 10)
    y_h, y_w = m.gates(x)
    assert y_h.numel() + y_w.numel() == 32 * (12 + 10)


def test_registry_and_errors() -> None:
    m = attnzoo.create("ela", channels=32, variant="t")
    assert m.variant == "T" and m.kernel_size == 5
    with pytest.raises(ValueError, match="variant"):
        EfficientLocalAttention(32, "XL")
    with pytest.raises(ValueError, match="gn_groups"):
        EfficientLocalAttention(16, "T")
    with pytest.raises(ValueError, match="conv_group_channels"):
        EfficientLocalAttention(20, "S", gn_groups=4)
    with pytest.raises(ValueError, match="kernel_size"):
        EfficientLocalAttention(16, "B", kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        attnzoo.create("ela", channels=16)(torch.randn(1, 8, 4, 4))
