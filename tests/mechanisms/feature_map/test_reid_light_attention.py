"""ReID light attention: float64 oracle of the pooled non-local equations, the non-local limit,
identity start, placement in a ResNet and the cost claim (parameters and FLOPs, no timing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomise_with_norm_stats

import attnzoo
from attnzoo.mechanisms.feature_map.reid_light_attention import (
    ReIDLightAttention,
    attach_after_stages,
    backbone_cost,
)


def _oracle(m: ReIDLightAttention, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    inner = m.q.out_channels
    p = m.pool
    q = torch.einsum("oc,bchw->bohw", m.q.weight[:, :, 0, 0], x) + m.q.bias[:, None, None]
    kv = torch.einsum("oc,bchw->bohw", m.kv.weight[:, :, 0, 0], x) + m.kv.bias[:, None, None]
    hp, wp = -(-h // p), -(-w // p)
    pooled = torch.zeros(b, 2 * inner, hp, wp, dtype=x.dtype)
    for i in range(hp):
        for j in range(wp):  # mean over the window's positions inside the map
            pooled[:, :, i, j] = kv[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p].mean(dim=(2, 3))
    k, v = pooled[:, :inner].flatten(2), pooled[:, inner:].flatten(2)
    scores = q.flatten(2).transpose(1, 2) @ k
    if m.scaled:
        scores = scores / inner**0.5
    y = (scores.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(b, inner, h, w)
    z = F.conv2d(y, m.out.weight, m.out.bias)
    bn = m.bn
    z = (z - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    return x + z * bn.weight[:, None, None] + bn.bias[:, None, None]


@pytest.mark.parametrize(
    ("pool", "scaled", "size"), [(2, True, (6, 4)), (3, False, (7, 5)), (1, True, (3, 3))]
)
def test_matches_equation_oracle(pool: int, scaled: bool, size: tuple[int, int]) -> None:
    m = ReIDLightAttention(16, 4, pool=pool, scaled=scaled).double().eval()
    randomise_with_norm_stats(m)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), _oracle(m, x))


def test_starts_as_identity_and_captures() -> None:
    m = ReIDLightAttention(8, 2).eval()
    x = torch.randn(1, 8, 6, 4)
    torch.testing.assert_close(m(x), x)
    with attnzoo.capture(m) as cap:
        m(x)
    assert cap.records[0].probs.shape == (1, 1, 24, 6)


def test_attach_and_cost_claim() -> None:
    torchvision = pytest.importorskip("torchvision")
    net = attach_after_stages(torchvision.models.resnet18(num_classes=5), (3, 4), reduction=4).eval()
    assert isinstance(net.layer3[1], ReIDLightAttention) and net.layer3[1].channels == 256
    assert isinstance(net.layer4[1], ReIDLightAttention) and net.layer4[1].channels == 512
    assert net(torch.randn(1, 3, 64, 32)).shape == (1, 5)
    cost = backbone_cost(timing=False)
    base, light, full = cost["resnet50"], cost["+light"], cost["+non_local"]
    # the light blocks add under 3% FLOPs and 2% parameters, a tenth of what non-local blocks add
    assert light["gflops"] < 1.03 * base["gflops"] and light["params_m"] < 1.02 * base["params_m"]
    assert light["gflops"] - base["gflops"] < 0.15 * (full["gflops"] - base["gflops"])
    assert light["params_m"] - base["params_m"] < 0.15 * (full["params_m"] - base["params_m"])


def test_errors() -> None:
    with pytest.raises(ValueError, match="reduction"):
        ReIDLightAttention(10, 4)
    with pytest.raises(ValueError, match="pool"):
        ReIDLightAttention(8, 2, pool=0)
    with pytest.raises(ValueError, match="stages"):
        attach_after_stages(torch.nn.Module(), (5,))
    with pytest.raises(TypeError, match="layer2"):
        attach_after_stages(torch.nn.Module(), (2,))
