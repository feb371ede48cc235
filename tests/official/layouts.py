"""Official checkpoints written by hand from the official code, for adapters without a parity fixture.

:func:`cbam_state_dict` follows Jongchan/attention-module ``MODELS/cbam.py`` (commit e4ee180):
``CBAM(gate_channels, reduction_ratio=16, pool_types=['avg', 'max'], no_spatial=False)`` holds
``ChannelGate.mlp = Sequential(Flatten(), Linear(C, C // r), ReLU(), Linear(C // r, C))`` (keys
``mlp.1.*`` and ``mlp.3.*``) and, unless ``no_spatial``, ``SpatialGate.spatial = BasicConv(2, 1, 7,
padding=3, relu=False)``: ``conv = Conv2d(2, 1, 7, bias=False)`` and ``bn = BatchNorm2d(1, eps=1e-5,
momentum=0.01, affine=True)``.
"""

from __future__ import annotations

import torch

__all__ = ["cbam_constructor", "cbam_state_dict"]


def cbam_constructor(channels: int, reduction: int, no_spatial: bool = False) -> dict[str, object]:
    """The official ``CBAM`` constructor kwargs."""
    return {
        "gate_channels": channels,
        "reduction_ratio": reduction,
        "pool_types": ["avg", "max"],
        "no_spatial": no_spatial,
    }


def cbam_state_dict(
    channels: int, reduction: int, no_spatial: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """An official ``CBAM`` state_dict: every float tensor drawn at random (float64), BN variances in
    ``[0.5, 1.5)``, ``num_batches_tracked`` an int64 scalar."""
    gen = torch.Generator().manual_seed(seed)
    hidden = channels // reduction
    shapes = {
        "ChannelGate.mlp.1.weight": (hidden, channels),
        "ChannelGate.mlp.1.bias": (hidden,),
        "ChannelGate.mlp.3.weight": (channels, hidden),
        "ChannelGate.mlp.3.bias": (channels,),
    }
    if not no_spatial:
        shapes["SpatialGate.spatial.conv.weight"] = (1, 2, 7, 7)
        for name in ("weight", "bias", "running_mean"):
            shapes[f"SpatialGate.spatial.bn.{name}"] = (1,)
    sd = {k: 0.4 * torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    if not no_spatial:
        sd["SpatialGate.spatial.bn.running_var"] = 0.5 + torch.rand(1, generator=gen, dtype=torch.float64)
        sd["SpatialGate.spatial.bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    return sd
