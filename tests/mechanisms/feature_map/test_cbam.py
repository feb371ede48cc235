"""CBAM: eq. 1-3 written with the official code's pooling ops; official checkpoints (the key layout of
Jongchan/attention-module MODELS/cbam.py, written by hand) load through attnzoo.official and give
the official forward computed independently in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.official.layouts import cbam_constructor, cbam_state_dict

from attnzoo import official
from attnzoo.mechanisms.feature_map.cbam import CBAM


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


def _official_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``CBAM.forward`` of MODELS/cbam.py from the official tensors: ChannelGate (avg and max pools of
    the full map through the shared mlp.1 -> ReLU -> mlp.3, summed, sigmoid), then SpatialGate
    (ChannelPool [max, mean] over channels, 7x7 conv with padding 3, eval BatchNorm, sigmoid)."""
    b, c = x.shape[:2]

    def mlp(v: torch.Tensor) -> torch.Tensor:
        h = torch.relu(v @ sd["ChannelGate.mlp.1.weight"].T + sd["ChannelGate.mlp.1.bias"])
        return h @ sd["ChannelGate.mlp.3.weight"].T + sd["ChannelGate.mlp.3.bias"]

    flat = x.reshape(b, c, -1)
    x = x * torch.sigmoid(mlp(flat.mean(-1)) + mlp(flat.amax(-1)))[:, :, None, None]
    if "SpatialGate.spatial.conv.weight" not in sd:
        return x
    pooled = torch.stack([x.amax(1), x.mean(1)], dim=1)
    s = F.conv2d(pooled, sd["SpatialGate.spatial.conv.weight"], padding=3)
    bn = {k.rsplit(".", 1)[-1]: v for k, v in sd.items() if k.startswith("SpatialGate.spatial.bn.")}
    s = (s - bn["running_mean"]) / torch.sqrt(bn["running_var"] + 1e-5) * bn["weight"] + bn["bias"]
    return x * torch.sigmoid(s)


@pytest.mark.parametrize("no_spatial", [False, True])
def test_official_checkpoint_gives_the_official_forward(no_spatial: bool) -> None:
    sd = cbam_state_dict(32, 8, no_spatial, seed=3)
    run = official.load("cbam", cbam_constructor(32, 8, no_spatial), sd)
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64)
    (out,) = run(x=x)
    torch.testing.assert_close(out, _official_forward(sd, x), atol=1e-12, rtol=1e-10)
    assert (run.module.spatial is None) == no_spatial


def test_official_checkpoint_errors() -> None:
    sd = cbam_state_dict(32, 8)
    with pytest.raises(official.CheckpointError, match=r"only \['avg', 'max'\]"):
        official.load("cbam", {**cbam_constructor(32, 8), "pool_types": ["avg", "lse"]}, sd)
    with pytest.raises(official.CheckpointError, match="no hidden unit"):
        official.load("cbam", cbam_constructor(4, 8), cbam_state_dict(4, 8))
    with pytest.raises(official.CheckpointError, match=r"SpatialGate\.spatial\.conv\.weight") as info:
        official.load("cbam", cbam_constructor(32, 8, no_spatial=True), sd)
    assert {p.kind for p in info.value.problems} == {"unexpected_key"}


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
