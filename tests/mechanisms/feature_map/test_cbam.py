"""CBAM: eq. 1-3 written with the official code's pooling ops, the official-checkpoint converter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.mechanisms.feature_map.cbam import CBAM, convert_official_cbam_state_dict


def _reference(m: CBAM, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[2:]
    avg = F.avg_pool2d(x, (h, w)).flatten(1)
    mx = F.max_pool2d(x, (h, w)).flatten(1)

    def mlp(v: torch.Tensor) -> torch.Tensor:
        return F.linear(F.relu(F.linear(v, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)

    x = x * torch.sigmoid(mlp(avg) + mlp(mx))[:, :, None, None]
    if m.spatial is None:
        return x
    pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
    s = F.conv2d(pooled, m.spatial.weight, padding=m.spatial.padding)
    if m.spatial_bn is not None:
        bn = m.spatial_bn
        s = F.batch_norm(s, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return x * torch.sigmoid(s)


@pytest.mark.parametrize(("spatial", "spatial_bn"), [(True, False), (True, True), (False, False)])
def test_matches_equations(spatial: bool, spatial_bn: bool) -> None:
    torch.manual_seed(0)
    m = CBAM(16, 4, spatial=spatial, spatial_bn=spatial_bn).double().eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.4)
    if m.spatial_bn is not None:
        m.spatial_bn.running_mean.fill_(0.1)
        m.spatial_bn.running_var.fill_(1.3)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(m, x), atol=1e-12, rtol=1e-10)


def test_official_checkpoint_converter() -> None:
    torch.manual_seed(1)
    source = CBAM(32, 16, spatial_bn=True)
    inverse = {
        "fc1.weight": "ChannelGate.mlp.1.weight", "fc1.bias": "ChannelGate.mlp.1.bias",
        "fc2.weight": "ChannelGate.mlp.3.weight", "fc2.bias": "ChannelGate.mlp.3.bias",
        "spatial.weight": "SpatialGate.spatial.conv.weight",
    }
    official_sd = {
        inverse.get(k, k.replace("spatial_bn.", "SpatialGate.spatial.bn.")): v
        for k, v in source.state_dict().items()
    }
    target = CBAM(32, 16, spatial_bn=True)
    target.load_state_dict(convert_official_cbam_state_dict(official_sd))
    x = torch.randn(1, 32, 4, 4)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_official_cbam_state_dict({"mlp.weight": torch.zeros(1)})


def test_gates_shapes_and_errors() -> None:
    m = CBAM(8, 16)  # hidden width clamps to 1 instead of the official 0
    assert m.fc1.out_features == 1
    x = torch.randn(2, 8, 3, 5)
    assert m.channel_gate(x).shape == (2, 8)
    assert m.spatial_gate(x).shape == (2, 1, 3, 5)
    with pytest.raises(ValueError, match="kernel_size"):
        CBAM(8, kernel_size=4)
    with pytest.raises(ValueError, match="spatial=True"):
        CBAM(8, spatial=False).spatial_gate(x)
