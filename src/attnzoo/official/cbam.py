"""Official CBAM format: ``MODELS/cbam.py::CBAM(gate_channels, reduction_ratio=16,
pool_types=['avg', 'max'], no_spatial=False)`` of Jongchan/attention-module.

Keys: ``ChannelGate.mlp.1.*`` (``Linear(C, C // r)``) and ``ChannelGate.mlp.3.*``
(``Linear(C // r, C)``) of the ``Sequential(Flatten, Linear, ReLU, Linear)``; unless
``no_spatial``, ``SpatialGate.spatial.conv.weight (1, 2, 7, 7)`` (no bias) and the BatchNorm
``SpatialGate.spatial.bn.*`` of its ``BasicConv(2, 1, 7, relu=False)``. They map onto
:class:`attnzoo.mechanisms.feature_map.cbam.CBAM` built with ``spatial_bn=True`` (``fc1``, ``fc2``,
``spatial``, ``spatial_bn``). Only the paper's ``pool_types`` avg and max (in either order, the sum
is the same) are implemented, and ``C // r`` must be at least 1 (the official MLP is empty below).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.feature_map.cbam import CBAM
from attnzoo.official import CheckpointError, Conversion, Problem, Signature, adapter
from attnzoo.official.keys import KeyMap

__all__ = ["convert_official_cbam_state_dict"]

_KEYS = KeyMap(
    renames=(
        ("ChannelGate.mlp.1.", "fc1."),
        ("ChannelGate.mlp.3.", "fc2."),
        ("SpatialGate.spatial.conv.", "spatial."),
        ("SpatialGate.spatial.bn.", "spatial_bn."),
    )
)
CBAM_SIGNATURE = Signature(
    gate_channels=int, reduction_ratio=(int, 16), pool_types=(list, ["avg", "max"]), no_spatial=(bool, False)
)


def convert_official_cbam_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``CBAM`` state_dict -> :class:`CBAM` state_dict (unchecked; :func:`attnzoo.official.load`
    with ``"cbam"`` checks the checkpoint and builds the module)."""
    return _KEYS.to_attnzoo(state_dict)


@adapter("cbam", {"CBAM": CBAM_SIGNATURE})
def load_cbam(kw: dict[str, Any], symbol: str) -> Conversion:
    problems = []
    if sorted(kw["pool_types"]) != ["avg", "max"]:
        problems.append(
            Problem(
                "argument",
                "pool_types",
                f"pool_types={kw['pool_types']!r}: only ['avg', 'max'] is implemented",
            )
        )
    if kw["reduction_ratio"] > 0 and kw["gate_channels"] // kw["reduction_ratio"] < 1:
        problems.append(
            Problem(
                "argument",
                "reduction_ratio",
                f"gate_channels // reduction_ratio = 0: the official MLP has no hidden unit "
                f"(gate_channels={kw['gate_channels']}, reduction_ratio={kw['reduction_ratio']})",
            )
        )
    if problems:
        raise CheckpointError(problems)
    module = CBAM(
        kw["gate_channels"],
        kw["reduction_ratio"],
        kernel_size=7,
        spatial=not kw["no_spatial"],
        spatial_bn=True,
    )
    return Conversion(module, lambda m, x: (m(x),), _KEYS.to_attnzoo, _KEYS.to_official)
