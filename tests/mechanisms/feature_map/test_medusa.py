"""MEDUSA: float64 oracle of the encoder-decoder body and its heads, the ResNet plug-in (torchvision
and timm) against a hand-run forward, SmallCNN hosting it, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomise_with_norm_stats

import attnzoo
from attnzoo.mechanisms.feature_map.medusa import Medusa, MedusaResNet
from attnzoo.models import SmallCNN


def _conv_bn_relu(seq: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for conv, bn in ((seq[0], seq[1]), (seq[3], seq[4])):
        x = F.conv2d(x, conv.weight, padding=1)
        x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        x = torch.relu(x * bn.weight[:, None, None] + bn.bias[:, None, None])
    return x


def _maps(m: Medusa, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """e_0 = Conv(x), e_l = Conv(MaxPool(e_{l-1})); d_l = Conv([Up(d_{l+1}); e_l]); A_l = sigmoid(W d_l)."""
    enc = [_conv_bn_relu(m.encoder[0], x)]
    for block in list(m.encoder)[1:]:
        prev = enc[-1]
        ph, pw = -prev.shape[-2] % 2, -prev.shape[-1] % 2  # ceil-mode pooling pads with -inf
        padded = F.pad(prev, (0, pw, 0, ph), value=float("-inf"))
        pooled = padded.unfold(2, 2, 2).unfold(3, 2, 2).amax(dim=(-1, -2))
        enc.append(_conv_bn_relu(block, pooled))
    dec = {len(enc) - 1: enc[-1]}
    for lv in range(len(enc) - 2, -1, -1):
        up = F.interpolate(dec[lv + 1], size=enc[lv].shape[-2:], mode="bilinear", align_corners=False)
        dec[lv] = _conv_bn_relu(m.decoder[lv], torch.cat([up, enc[lv]], 1))
    return {
        int(k): torch.sigmoid(F.conv2d(dec[int(k)], head.weight, head.bias)) for k, head in m.heads.items()
    }


@pytest.mark.parametrize(
    ("depth", "size", "residual"), [(1, (4, 5), False), (3, (7, 9), False), (3, (8, 8), True)]
)
def test_matches_equation_oracle(depth: int, size: tuple[int, int], residual: bool) -> None:
    extra = {depth - 1: 3} if depth > 1 else {}
    m = Medusa(6, width=4, depth=depth, head_channels=extra, residual=residual).double().eval()
    randomise_with_norm_stats(m)
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    maps = _maps(m, x)
    got = m.attention_maps(x)
    assert sorted(got) == sorted(maps)
    for lv, a in maps.items():
        torch.testing.assert_close(got[lv], a)
    expected = x * (1 + maps[0]) if residual else x * maps[0]
    torch.testing.assert_close(m(x), expected)


def test_widths_and_cap() -> None:
    assert Medusa(3, width=8, depth=4).widths == [8, 16, 32, 64]
    assert Medusa(3, width=8, depth=4, max_width=20).widths == [8, 16, 20, 20]


def test_resnet_plug_in_matches_hand_run() -> None:
    torchvision = pytest.importorskip("torchvision")
    resnet = torchvision.models.resnet18(num_classes=4)
    net = MedusaResNet(resnet, width=4, max_width=32).double().eval()
    randomise_with_norm_stats(net.body)
    images = torch.randn(2, 3, 70, 83, dtype=torch.float64)
    maps = _maps(net.body, images)
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
    for level, stage in zip((2, 3, 4, 5), (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)):
        x = stage(x)
        a = F.interpolate(maps[level], size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = x * a
    expected = resnet.fc(x.mean(dim=(2, 3)))
    torch.testing.assert_close(net(images), expected)
    assert [net.body.heads[str(lv)].out_channels for lv in (2, 3, 4, 5)] == [64, 128, 256, 512]


def test_timm_resnet_and_small_cnn_host_it() -> None:
    timm = pytest.importorskip("timm")
    net = MedusaResNet(timm.create_model("resnet18", num_classes=3, pretrained=False), width=2).eval()
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    cnn = SmallCNN(1, 10, attention="medusa", attention_overrides={"width": 4, "depth": 2})
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert sum(isinstance(mod, Medusa) for mod in cnn.modules()) == 2


def test_errors() -> None:
    with pytest.raises(ValueError, match="head_channels"):
        Medusa(4, depth=2, head_channels={2: 3})
    with pytest.raises(TypeError, match="head_channels"):
        Medusa(4, depth=2, head_channels={1: 2.5})
    with pytest.raises(ValueError, match="head_channels"):
        Medusa(4, depth=2, head_channels={0: 3})
    with pytest.raises(ValueError, match="levels"):
        Medusa(4, depth=2).attention_maps(torch.randn(1, 4, 6, 6), levels=(1,))
    with pytest.raises(ValueError, match="x"):
        Medusa(4, depth=2).attention_maps(torch.randn(1, 5, 6, 6))
    with pytest.raises(TypeError, match="resnet"):
        MedusaResNet(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="residual"):
        attnzoo.create("medusa", channels=4, residual=1)
