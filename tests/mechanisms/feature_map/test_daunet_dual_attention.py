"""DAUNet dual-attention block: the block's equations with materialised attention matrices, capture."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.feature_map.daunet_dual_attention import DualAttention3d


def _randomise(m: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for p in m.parameters():
        p.data = 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
    for name, b in m.named_buffers():
        if name.endswith("running_var"):
            b.data = 0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype)


def _reference(m: DualAttention3d, x: torch.Tensor, sign: float) -> torch.Tensor:
    def pam(u: torch.Tensor) -> torch.Tensor:
        a = m.pos_attn
        q, k, v = a.query(u).flatten(2), a.key(u).flatten(2), a.value(u).flatten(2)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N)
        return a.gamma * (v @ attn.transpose(1, 2)).view_as(u) + u

    def cam(u: torch.Tensor) -> torch.Tensor:
        flat = u.flatten(2)
        attn = torch.softmax(sign * flat @ flat.transpose(1, 2), dim=-1)  # (B, C', C')
        return m.ch_attn.gamma * (attn @ flat).view_as(u) + u

    p = m.pos_out(pam(m.pos_in(x)))
    c = m.ch_out(cam(m.ch_in(x)))
    return m.fuse(p + c)


@pytest.mark.parametrize(("sign", "qk_reduction"), [(-1.0, 1), (1.0, 2)])
def test_matches_equations(sign: float, qk_reduction: int) -> None:
    m = DualAttention3d(32, qk_reduction=qk_reduction, energy_sign=sign).double().eval()
    _randomise(m)
    x = torch.randn(2, 32, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(m, x, sign), atol=1e-12, rtol=1e-10)


def test_capture_sees_both_matrices() -> None:
    m = DualAttention3d(16, gamma_init=0.5).eval()
    with attnzoo.capture(m) as cap:
        m(torch.randn(1, 16, 2, 3, 4))
    shapes = sorted(tuple(r.probs.shape) for r in cap.records)
    assert shapes == [(1, 1, 2, 2), (1, 1, 24, 24)]
    assert cap.names() == [""]  # recorded under the block itself


def test_errors() -> None:
    with pytest.raises(ValueError, match="reduction"):
        DualAttention3d(12)
    with pytest.raises(ValueError, match="qk_reduction"):
        DualAttention3d(16, qk_reduction=3)
    with pytest.raises(ValueError, match="dimensions"):
        DualAttention3d(16)(torch.randn(1, 16, 4, 4))
