"""A light attention block for person re-identification backbones, after Eisenbach et al., "A Little
Bit Attention Is All You Need for Person Re-Identification" (ICRA 2023, arXiv 2302.14574): attention
cheap enough for a mobile robot, inserted at a few places of a ResNet.

Only the paper's abstract was available to attnzoo (see the card's ledger). The block is a non-local
self-attention reduced in both costly axes, channels (``C' = C / r``) and keys (average-pooled by
``p``), and started as the identity::

    q = W_q x,  k = AvgPool_p(W_k x),  v = AvgPool_p(W_v x)           (B, C', H W), (B, C', H W / p^2)
    y = softmax(q^T k / sqrt(C')) v^T                                  every position reads the coarse map
    out = x + BN(W_o y)                                                BN's scale starts at 0

With ``p = 1, r = 2`` and no scaling it is the non-local block (Wang et al., CVPR 2018) that ReID
baselines such as AGW insert into ResNet-50, at ``O((H W)^2 C')``; the defaults ``p = 2, r = 16``
cut its attention 32-fold (``8 p^2``) and its projections 8-fold. :func:`attach_after_stages`
inserts blocks into a ResNet and :func:`backbone_cost` measures a ResNet-50 with and without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int, finite_check_enabled, set_finite_check
from attnzoo.families import FeatureMapAttention
from attnzoo.kernels import attention
from attnzoo.mechanisms.feature_map.medusa import resnet_stage_channels
from attnzoo.registry import Card, register

__all__ = ["ReIDLightAttention", "attach_after_stages", "backbone_cost"]


@register(
    Card(
        name="reid_light_attention",
        aliases=("little_bit_attention",),
        family="feature_map",
        summary="Residual non-local attention with reduced channels and average-pooled keys/values, "
        "zero-initialised output: a cheap block to insert into a ReID ResNet.",
        paper="A Little Bit Attention Is All You Need for Person Re-Identification",
        arxiv="2302.14574",
        year=2023,
        official_repo=None,
        parity="equations",
        time_complexity="O(H W C C' + (H W)^2 C' / p^2)",
        memory_complexity="O(H W C) with SDPA (O((H W)^2 / p^2) when capturing)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "Only the abstract was available to attnzoo and no code is published: the block is a guess "
            "built on the abstract's claims (attention that barely slows inference, placed by "
            "architecture search at some locations of a ReID backbone).",
            "Guess: a non-local block (the costly attention of ReID baselines such as AGW) made light by "
            "channel reduction r and average-pooled keys/values p; scaled by 1/sqrt(C') (non-local: none).",
            "Guess: output BatchNorm with zero-initialised scale (non-local's identity start).",
            "Guess: attach_after_stages places one block after stages 2 and 3 by default (AGW's "
            "non-local stages); the paper's searched placement rules are unknown.",
            "Key/value pooling uses ceil mode, so odd feature-map sizes keep their last row/column.",
        ),
        tiny={"channels": 8, "reduction": 2, "pool": 2, "zero_init": False},
        bench={
            "channels": 1024,
            "reduction": 16,
            "pool": 2,
            "sizes": [(16, 8), (32, 16), (64, 32)],
            "variants": {"light": {}, "non_local": {"reduction": 2, "pool": 1, "scaled": False}},
        },
        sweep={"reduction": (1, 2, 4), "pool": (1, 2, 3), "scaled": (True, False), "size": (1, 8)},
        conformance={
            "zero_grad_ok": {
                conv: "with zero_init=True (the default, the bench configuration) the output BatchNorm's "
                "scale starts at 0, so the convolutions before it get no gradient until it moves"
                for conv in ("q", "kv", "out")
            }
        },
    )
)
class ReIDLightAttention(FeatureMapAttention):
    """Light non-local attention on ``x (B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        channels: C.
        reduction: r, with ``C' = C / r`` query/key/value channels; must divide ``channels``.
        pool: p, the average-pooling window (and stride) of keys and values (1 = none).
        scaled: scale the scores by ``1 / sqrt(C')`` (``False``: the non-local block's raw dot products).
        zero_init: start the output BatchNorm's scale at 0, so the block starts as the identity.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        *,
        pool: int = 2,
        scaled: bool = True,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        check_divisible(channels, reduction, "channels", "reduction")
        self.pool = check_int(pool, "pool")
        self.scaled = check_bool(scaled, "scaled")
        check_bool(zero_init, "zero_init")
        self.channels = channels
        inner = channels // reduction
        self.q = nn.Conv2d(channels, inner, 1)
        self.kv = nn.Conv2d(channels, 2 * inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        if zero_init:
            nn.init.zeros_(self.bn.weight)

    def _pooled(self, t: torch.Tensor) -> torch.Tensor:
        if self.pool == 1:
            return t
        return F.avg_pool2d(t, self.pool, ceil_mode=True, count_include_pad=False)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.q(x).flatten(2).transpose(1, 2)[:, None]  # (B, 1, HW, C')
        k, v = self._pooled(self.kv(x)).flatten(2).transpose(1, 2)[:, None].chunk(2, dim=-1)
        y = attention(q, k, v, scale=None if self.scaled else 1.0)[:, 0]
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        return x + self.bn(self.out(y))


def attach_after_stages(resnet: nn.Module, stages: Sequence[int] = (2, 3), **kwargs: Any) -> nn.Module:
    """Put one :class:`ReIDLightAttention` after each of the ResNet's ``layer{i}`` for ``i`` in
    ``stages`` (1..4), in place, and return the ResNet; ``kwargs`` go to the blocks (not ``channels``,
    read from each stage). Works on torchvision and timm ResNets."""
    for i in stages:
        if isinstance(i, bool) or i not in (1, 2, 3, 4):
            raise ValueError(f"stages must be among 1..4, got {list(stages)}")
        stage = getattr(resnet, f"layer{i}", None)
        if stage is None:
            raise TypeError(f"resnet has no layer{i}: pass a torchvision or timm ResNet")
        block = ReIDLightAttention(resnet_stage_channels(stage), **kwargs)
        setattr(resnet, f"layer{i}", nn.Sequential(stage, block))
    return resnet


def backbone_cost(
    size: tuple[int, int] = (256, 128),
    stages: Sequence[int] = (2, 3),
    *,
    timing: bool = True,
    repeats: int = 10,
    **kwargs: Any,
) -> dict[str, dict[str, float]]:
    """Parameters (M), forward GFLOPs and (with ``timing``) median forward latency (ms, batch 1, the
    current thread count) of a torchvision ResNet-50 at the ReID input ``size``, plain, with light
    blocks (``kwargs``) and with full non-local blocks (r = 2, p = 1, unscaled) after ``stages``;
    attnzoo's NaN/Inf input check is off while it measures."""
    from torchvision.models import resnet50

    from attnzoo.bench.measure import count_flops, time_call

    configs = {
        "resnet50": None,
        "+light": kwargs,
        "+non_local": {"reduction": 2, "pool": 1, "scaled": False},
    }
    image = torch.randn(1, 3, *size)
    rows: dict[str, dict[str, float]] = {}
    checking = finite_check_enabled()
    set_finite_check(False)  # time the arithmetic, not attnzoo's NaN/Inf input scan
    try:
        for label, block_kwargs in configs.items():
            torch.manual_seed(0)
            net = resnet50().eval()
            if block_kwargs is not None:
                attach_after_stages(net, stages, **block_kwargs)
            with torch.no_grad():
                row = {
                    "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
                    "gflops": count_flops(lambda net=net: net(image)) / 1e9,
                }
                if timing:
                    timed = time_call(lambda net=net: net(image), warmup=2, repeats=repeats, budget_s=30.0)
                    row["ms"] = timed["median"]
            rows[label] = row
    finally:
        set_finite_check(checking)
    return rows
