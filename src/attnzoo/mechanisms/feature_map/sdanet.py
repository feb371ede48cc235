"""Selective dense attention of SDANet (Wang et al., "Towards Real-world Prohibited Item Detection:
A Large-scale X-ray Benchmark", ICCV 2021, arXiv 2108.07020, Sec. 4: dense attention module and
dependency refinement module).

For a pyramid ``P_1..P_L`` (finest first) and the level ``r`` being refined, every level is
gathered to the size of ``P_r`` (adaptive max pooling for finer levels, nearest upsampling for
coarser ones) into ``F_1..F_L``; with ``U = sum_l F_l``:

    channel:  a = softmax_L( W_l ReLU(BN(W_d GAP(U))) )        (per channel, over levels)
    spatial:  b = softmax_L( Conv7x7_l([mean_C U, max_C U]) )   (per pixel, over levels)
    S = sum_l a_l * F_l + sum_l b_l * F_l,
    out = P_r + GC(S),   GC(S) = S + W_2 ReLU(LN(W_1 sum_j softmax_j(w^T S_j) S_j))

where ``GC`` is the dependency refinement module (a global-context block, Cao et al. 2019). The
global-context pooling is softmax attention with one learned query and runs through
:func:`attnzoo.kernels.attention_reference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.capture import capturing, record
from attnzoo.checks import check_float, check_int, check_tensor
from attnzoo.families import FeatureMapAttention
from attnzoo.kernels import attention_reference
from attnzoo.registry import Card, register

__all__ = ["SelectiveDenseAttention"]


@register(
    Card(
        name="sdanet",
        aliases=("selective_dense_attention", "sdanet_dense_attention"),
        family="feature_map",
        summary="Level-selective dense channel + spatial attention over a feature pyramid, GC refinement.",
        paper="Towards Real-world Prohibited Item Detection: A Large-scale X-ray Benchmark",
        arxiv="2108.07020",
        year=2021,
        official_repo="bywang2018/security-dataset",
        official_commit="3ade35cea328946d221395905ec20bacca4a134c",
        parity="equations",
        time_complexity="O(L C H W + C d + L H W k^2)",
        memory_complexity="O(L C H W)",
        layouts=("BCHW",),
        spatial_dims=2,
        extra_inputs=("levels",),
        ledger=(
            "Official code exists (mmdet/models/detectors/cascade_rcnn.py: channel_attention, "
            "spatial_attention, selective_attention) but no parity fixture does: verified against "
            "a float64 transcription of that forward in the tests (parity='equations').",
            "The official module takes the whole FPN list; attnzoo's forward takes x = the level being "
            "refined and levels= the other L-1 levels in pyramid order (finest first), so the family "
            "contract (B, C, H, W) -> (B, C, H, W) holds for x.",
            "The official code hard-codes C=256, L=5, d=128, kernel 7 and builds one module per level; "
            "attnzoo takes channels, num_levels, refine_level, hidden and kernel_size.",
            "The paper calls GC the dependency refinement module; officially it is mmdet's ContextBlock "
            "(ratio 1/16, 'att' pooling, channel_add) applied to the fused map, then an identity "
            "adaptive_max_pool2d (same size), then the residual P_r.",
            "The L per-level 1x1 convs (channel) and 7x7 convs (spatial) are stored as one Linear(d, L*C) "
            "and one Conv2d(2, L, k).",
        ),
        tiny={"channels": 16, "num_levels": 3, "refine_level": 1, "hidden": 8, "context_ratio": 0.25},
        sweep={"num_levels": (2, 3), "refine_level": (0, 1), "size": (4, 9)},
        bench={"channels": 256, "num_levels": 5, "refine_level": 2, "hidden": 128},
        conformance={
            "zero_grad_ok": {
                "context_mask.bias": "the global-context logits w^T S_j + b go through a softmax over "
                "positions j, which a shared shift b leaves unchanged: its gradient is zero in exact "
                "arithmetic (rounding leaves ~1e-17 or exactly 0)"
            },
            "skip": {
                "export_dynamic_size": "F.adaptive_max_pool2d, which gathers the finer levels to the "
                "size of x, specialises its output size in torch.export, so H and W are fixed"
            }
        },
    )
)
class SelectiveDenseAttention(FeatureMapAttention):
    """SDANet selective dense attention for pyramid level ``refine_level``.

    ``forward(x (B, C, H, W), *, levels)`` with ``levels`` the other ``num_levels - 1`` pyramid
    maps ``(B, C, H_l, W_l)`` in pyramid order (finest first, ``x`` sits at ``refine_level``);
    returns ``(B, C, H, W)``.

    Args:
        channels: C of every level.
        num_levels: L.
        refine_level: index of ``x`` in the pyramid.
        hidden: width d of the channel-attention bottleneck.
        kernel_size: spatial-attention kernel (odd).
        context_ratio: bottleneck ratio of the global-context refinement.
    """

    def __init__(
        self,
        channels: int,
        num_levels: int = 5,
        refine_level: int = 0,
        hidden: int = 128,
        *,
        kernel_size: int = 7,
        context_ratio: float = 1.0 / 16.0,
    ) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("num_levels", num_levels), ("hidden", hidden)):
            check_int(value, name)
        if check_int(refine_level, "refine_level", minimum=0) >= num_levels:
            raise ValueError(f"refine_level must be in [0, num_levels={num_levels}), got {refine_level!r}")
        if check_int(kernel_size, "kernel_size") % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        planes = int(channels * check_float(context_ratio, "context_ratio"))
        if planes <= 0:
            raise ValueError(f"context_ratio={context_ratio!r} leaves no channels for C={channels}")
        self.channels = channels
        self.num_levels = num_levels
        self.refine_level = refine_level
        self.squeeze = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU()
        )
        self.excite = nn.Linear(hidden, num_levels * channels)
        self.spatial = nn.Conv2d(2, num_levels, kernel_size, padding=kernel_size // 2, bias=False)
        self.context_mask = nn.Conv2d(channels, 1, 1)
        self.context_add = nn.Sequential(
            nn.Conv2d(channels, planes, 1),
            nn.LayerNorm([planes, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(planes, channels, 1),
        )

    def example_kwargs(
        self,
        batch: int,
        size: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device | str | None,
        generator: torch.Generator | None,
    ) -> dict[str, Any]:
        """The other pyramid levels, each twice (finer) or half (coarser) the size of its neighbour."""
        levels = []
        for i in range(self.num_levels):
            if i == self.refine_level:
                continue
            scale = 2.0 ** (self.refine_level - i)
            hw = [max(1, round(s * scale)) for s in size]
            t = torch.randn(batch, self.channels, *hw, generator=generator, dtype=torch.float32)
            levels.append(t.to(device=device, dtype=dtype))
        return {"levels": tuple(levels)}

    def gather(self, x: torch.Tensor, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """All levels at the size of ``x``: ``(B, L, C, H, W)``."""
        size = x.shape[-2:]
        pyramid = [*levels[: self.refine_level], x, *levels[self.refine_level :]]
        out = []
        for i, level in enumerate(pyramid):
            if i < self.refine_level:
                out.append(F.adaptive_max_pool2d(level, size))
            elif i > self.refine_level:
                out.append(F.interpolate(level, size=size, mode="nearest"))
            else:
                out.append(level)
        return torch.stack(out, dim=1)

    def _refine(self, s: torch.Tensor) -> torch.Tensor:
        b, c = s.shape[:2]
        tokens = s.flatten(2).transpose(1, 2)[:, None]  # (B, 1, HW, C)
        q = self.context_mask.weight.reshape(1, 1, 1, c).to(s.dtype)
        bias = self.context_mask.bias.to(s.dtype).reshape(1, 1, 1, 1).expand(b, 1, 1, tokens.shape[2])
        context = attention_reference(q, tokens, tokens, bias=bias, scale=1.0)  # (B, 1, 1, C)
        return s + self.context_add(context.reshape(b, c, 1, 1))

    def compute(  # type: ignore[override]
        self, x: torch.Tensor, levels: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        levels = tuple(levels) if levels is not None else ()
        if len(levels) != self.num_levels - 1:
            raise ValueError(
                f"levels must hold the other {self.num_levels - 1} pyramid maps, got {len(levels)}"
            )
        for i, level in enumerate(levels):
            check_tensor(level, f"levels[{i}]", ndim=4)
            if level.shape[0] != x.shape[0] or level.shape[1] != self.channels:
                raise ValueError(
                    f"levels[{i}] must have shape ({x.shape[0]}, {self.channels}, H, W), "
                    f"got {tuple(level.shape)}"
                )
        feats = self.gather(x, levels)
        b, lv, c = feats.shape[:3]
        u = feats.sum(dim=1)
        z = self.squeeze(u.mean(dim=(2, 3), keepdim=True)).flatten(1)
        a = self.excite(z).reshape(b, lv, c).softmax(dim=1)
        desc = torch.cat([u.mean(dim=1, keepdim=True), u.amax(dim=1, keepdim=True)], dim=1)
        s_att = self.spatial(desc).softmax(dim=1)
        if capturing():
            record(a[:, None].transpose(-1, -2), kind="level_channel")
            record(s_att.flatten(2).transpose(1, 2)[:, None], kind="level_spatial")
        fused = (feats * a[..., None, None]).sum(dim=1) + (feats * s_att[:, :, None]).sum(dim=1)
        return x + self._refine(fused)
