"""ContMix: context-mixing dynamic kernels (Lou & Yu, "OverLoCK: An Overview-first-Look-Closely-next
ConvNet with Context-Mixing Dynamic Kernels", CVPR 2025, Sec. 3.3 and eq. 3-5).

For ``x (B, C, H, W)`` and ``G = 2 * num_heads`` groups, every pixel ``n`` gets, per group, an
affinity to ``49`` region centroids of the feature map (``AdaptiveAvgPool 7x7``),

    A_g = (Q_g * s) K_g^T,   Q = BN(W_q x) (C/2 ch.),   K = BN(W_k pool7(x)) (C/2 ch.),

which a shared linear map turns into the logits of two dynamic depthwise kernels (sizes ``ks``
and ``k``): ``[D_1, D_2] = A W_p + b``. With a relative-position bias per tap, each kernel is
softmax-normalised over its window taps and aggregates the pixel's clamped ``ks x ks`` (``k x k``)
window of ``V = BN(W_v x)`` (first / second half of the channels):

    y = Concat(Agg_ks(softmax(D_1 + rpb_1), V_1), Agg_k(softmax(D_2 + rpb_2), V_2)).

The output ``proj(BN(gate * SE(BN(W_f y) + LePE(x))))`` adds a dilated-reparameterised depthwise
large kernel (LePE, from UniRepLKNet) and a SiLU gate ``gate = SiLU(BN(W_g x))``.
:class:`ContMixBlock` wraps it into the plug-and-play block of the official repository (residual
depthwise convs, LayerNorm, layer scale and a GRN MLP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.capture import capturing, record
from attnzoo.checks import check_bool, check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.kernels.clamped_window import neighborhood_aggregate, neighborhood_bias
from attnzoo.registry import Card, register

__all__ = ["DILATED_BRANCHES", "ContMix", "ContMixBlock", "DilatedReparamConv"]

#: (kernel size, dilation) of the parallel dilated branches of UniRepLKNet's Dilated Reparam Block.
DILATED_BRANCHES: dict[int, tuple[tuple[int, int], ...]] = {
    5: ((3, 1), (3, 2)),
    7: ((5, 1), (3, 1), (3, 2), (3, 3)),
    9: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4)),
    11: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    13: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    15: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    17: ((5, 1), (7, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    19: ((5, 1), (7, 1), (9, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
}

_REGIONS = 7


def _adaptive_avg_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` as two averaging matrices (same bins; traceable with dynamic sizes)."""

    def bins(n_in: int, n_out: int) -> torch.Tensor:
        i = torch.arange(n_out, device=x.device)[:, None]
        j = torch.arange(n_in, device=x.device)[None, :]
        start = (i * n_in) // n_out
        end = ((i + 1) * n_in + n_out - 1) // n_out
        inside = (j >= start) & (j < end)
        return inside.to(x.dtype) / (end - start).to(x.dtype)

    return bins(x.shape[-2], size[0]) @ x @ bins(x.shape[-1], size[1]).T


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class DilatedReparamConv(nn.Module):
    """Depthwise ``k x k`` conv plus parallel dilated depthwise convs, each followed by BN (summed).

    ``fused=True`` holds the single equivalent ``k x k`` conv with bias (the reparameterised,
    inference form); :meth:`fuse` converts an unfused module in place.
    """

    def __init__(self, channels: int, kernel_size: int, *, fused: bool = False) -> None:
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f"kernel_size must be one of {sorted(DILATED_BRANCHES)}, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.fused = fused
        pad = kernel_size // 2
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=pad, groups=channels, bias=fused)
        self.bn = None if fused else nn.BatchNorm2d(channels)
        self.branches = nn.ModuleList()
        if not fused:
            for k, r in DILATED_BRANCHES[kernel_size]:
                pad = r * (k - 1) // 2
                conv = nn.Conv2d(channels, channels, k, padding=pad, dilation=r, groups=channels, bias=False)
                self.branches.append(nn.Sequential(conv, nn.BatchNorm2d(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is None:
            return self.conv(x)
        out = self.bn(self.conv(x))
        for branch in self.branches:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BNs and dilated branches into one ``k x k`` conv (exact in eval mode)."""
        if self.bn is None:
            return

        def folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
            std = (bn.running_var + bn.eps).sqrt()
            scale = bn.weight / std
            return conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale

        weight, bias = folded(self.conv, self.bn)
        weight = weight.clone()
        for branch in self.branches:
            w, b = folded(branch[0], branch[1])
            k, r = branch[0].kernel_size[0], branch[0].dilation[0]
            off = self.kernel_size // 2 - r * (k - 1) // 2
            weight[:, :, off : off + r * (k - 1) + 1 : r, off : off + r * (k - 1) + 1 : r] += w
            bias = bias + b
        channels = weight.shape[0]
        conv = nn.Conv2d(channels, channels, self.kernel_size, padding=self.kernel_size // 2, groups=channels)
        conv = conv.to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.conv = conv
        self.bn = None
        self.branches = nn.ModuleList()
        self.fused = True


@register(
    Card(
        name="contmix",
        aliases=("overlock_contmix", "context_mixing_dynamic_kernels"),
        family="feature_map",
        summary="Per-pixel dynamic depthwise kernels from affinities to 7x7 region centroids (OverLoCK).",
        paper="OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels",
        arxiv="2502.20087",
        year=2025,
        official_repo="LMMMEng/OverLoCK",
        official_commit="2c8ab3b29e3a11fb4a2510d98e4d9ed8b33cf091",
        parity="official",
        parity_fixtures=("overlock_contmix",),
        time_complexity="O(H W C (C + 49 + k^2 + ks^2) + H W G 49 (k^2 + ks^2))",
        memory_complexity="O(H W (C + G (49 + k^2 + ks^2)))",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "Parity is against the plug-and-play ContMixBlock (models/contmix.py), whose dynamic kernels "
            "take their context (the 7x7 region keys) from the block's own input; the backbone's "
            "DynamicConvBlock with separate context priors (needs natten) is not reproduced.",
            "Query scale is (C // G)^-0.5 as in the official code, although the per-group query width is "
            "(C/2)/G (the paper's 1/sqrt(d) would be sqrt 2 larger).",
            "Windows are NATTEN-style clamped at the borders (attnzoo.kernels.clamped_window), matching the "
            "official pure-PyTorch fallback (unfold + replicate pad); na2d_av itself is not checked.",
            "When min(H, W) < kernel_size the input of the dynamic branch is bilinearly resized to "
            "(k, int(k / H * W)) or (int(k / W * H), k) and the result average-pooled back, as officially.",
            "weight_proj is a 1x1 Conv2d over the 49 regions officially; attnzoo stores it as a Linear "
            "(the converter reshapes). LePE: fused=True is the official deploy (reparameterised) form.",
            "The SE layer uses GELU and max(16, C // 8) hidden channels (official SEModule), not the "
            "classic ReLU SE.",
            "ContMix is the token mixer from norm1 to proj; ContMixBlock adds the official block's "
            "residual depthwise convs, LayerNorm, LayerScale and GRN MLP; drop_path is stochastic "
            "depth in training only.",
        ),
        tiny={"channels": 8, "kernel_size": 5, "smk_size": 3, "num_heads": 1},
        sweep={"kernel_size": (5, 7), "num_heads": (1, 2), "size": (3, 8)},
        bench={"channels": 64, "kernel_size": 7, "smk_size": 5, "num_heads": 2},
        conformance={"sizes": [(5, 7), (3, 4)]},
    )
)
class ContMix(FeatureMapAttention):
    """ContMix mixer on ``x (B, C, H, W) -> (B, C, H, W)`` (``x`` is the block's normalised input).

    Args:
        channels: C; must be divisible by ``4 * num_heads``.
        kernel_size: k of the large dynamic kernel and of LePE (odd, 5..19).
        smk_size: ks of the small dynamic kernel (odd, ``<= kernel_size``).
        num_heads: dynamic-kernel heads; the kernels use ``G = 2 * num_heads`` groups.
        fused_lepe: hold LePE in its reparameterised (deploy) form.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        smk_size: int = 5,
        num_heads: int = 2,
        *,
        fused_lepe: bool = False,
    ) -> None:
        super().__init__()
        groups = 2 * check_int(num_heads, "num_heads")
        if check_int(channels, "channels") % (2 * groups):
            raise ValueError(
                f"channels must be a positive multiple of 4 * num_heads = {2 * groups}, got {channels!r}"
            )
        if check_int(kernel_size, "kernel_size") not in DILATED_BRANCHES:
            raise ValueError(f"kernel_size must be one of {sorted(DILATED_BRANCHES)}, got {kernel_size!r}")
        check_bool(fused_lepe, "fused_lepe")
        if check_int(smk_size, "smk_size") % 2 == 0 or smk_size > kernel_size:
            raise ValueError(f"smk_size must be an odd int in [1, {kernel_size}], got {smk_size!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.smk_size = smk_size
        self.groups = groups
        self.scale = (channels // groups) ** -0.5
        self.query = _conv_bn(channels, channels // 2)
        self.key = _conv_bn(channels, channels // 2)
        self.value = _conv_bn(channels, channels)
        self.weight_proj = nn.Linear(_REGIONS * _REGIONS, smk_size**2 + kernel_size**2)
        self.rpb_small = nn.Parameter(torch.empty(groups, 2 * smk_size - 1, 2 * smk_size - 1))
        self.rpb_large = nn.Parameter(torch.empty(groups, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb_small, std=0.02)
        nn.init.trunc_normal_(self.rpb_large, std=0.02)
        self.fusion = _conv_bn(channels, channels)
        self.lepe = DilatedReparamConv(channels, kernel_size, fused=fused_lepe)
        self.lepe_bn = nn.BatchNorm2d(channels)
        hidden = max(16, channels // 8)
        self.se = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))
        self.gate = _conv_bn(channels, channels)
        self.proj_bn = nn.BatchNorm2d(channels)
        self.proj = nn.Conv2d(channels, channels, 1)

    @torch.compiler.disable
    def dynamic_size(self, height: int, width: int) -> tuple[int, int]:
        """Grid the dynamic kernels run on: the input size, or the official resize when too small.

        The rule is float arithmetic (``int(k / H * W)``), evaluated eagerly so that compiled graphs
        get concrete sizes.
        """
        k = self.kernel_size
        if min(height, width) >= k:
            return height, width
        if height < width:
            return k, int(k / height * width)
        return int(k / width * height), k

    def _branch(self, logits: torch.Tensor, rpb: torch.Tensor, value: torch.Tensor, k: int) -> torch.Tensor:
        h, w = value.shape[-2:]
        attn = (logits + neighborhood_bias(rpb, h, w, k)[None]).softmax(dim=-1)
        if capturing():
            record(attn.flatten(2, 3), kind="dynamic_kernel")
        return neighborhood_aggregate(attn, value, k)

    def dynamic_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The context-mixing dynamic-kernel branch ``y`` (before ``fusion``), ``(B, C, H, W)``."""
        b, c, h0, w0 = x.shape
        h, w = self.dynamic_size(h0, w0)
        if (h, w) != (h0, w0):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        g = self.groups
        q = (self.query(x) * self.scale).reshape(b, g, c // (2 * g), h * w)
        regions = _adaptive_avg_pool(x, (_REGIONS, _REGIONS))
        k = self.key(regions).reshape(b, g, c // (2 * g), _REGIONS * _REGIONS)
        logits = self.weight_proj(q.transpose(-1, -2) @ k).reshape(b, g, h, w, -1)
        small, large = logits.split([self.smk_size**2, self.kernel_size**2], dim=-1)
        v = self.value(x).reshape(b, 2, g, c // (2 * g), h, w)
        y1 = self._branch(small, self.rpb_small, v[:, 0], self.smk_size)
        y2 = self._branch(large, self.rpb_large, v[:, 1], self.kernel_size)
        y = torch.cat([y1, y2], dim=1).permute(0, 1, 4, 2, 3).reshape(b, c, h, w)
        if (h, w) != (h0, w0):
            y = _adaptive_avg_pool(y, (h0, w0))
        return y

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.silu(self.gate(x))
        y = self.fusion(self.dynamic_kernels(x)) + self.lepe_bn(self.lepe(x))
        y = y * torch.sigmoid(self.se(y.mean(dim=(2, 3), keepdim=True)))
        return self.proj(self.proj_bn(gate * y))


class _LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ResDWConv(nn.Conv2d):
    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class _LayerScale(nn.Module):
    def __init__(self, channels: int, init_value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class _GRN(nn.Module):
    """Global response normalisation (ConvNeXt V2) on ``(B, C, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return (self.gamma[:, None, None] * nx + 1) * x + self.beta[:, None, None]


class ContMixBlock(nn.Module):
    """The official plug-and-play ContMix block on ``x (B, C, H, W) -> (B, C, H, W)``.

    ``x = x + DW(x)``; ``x = x + ls1(ContMix(LN(x)))`` (or ``ls1(x) + ContMix(LN(x))`` with
    ``res_scale``); ``x = x + DW(x)``; ``x = x + ls2(MLP(LN(x)))`` (or ``ls2(x) + MLP(LN(x))``).

    Args:
        dim, kernel_size, smk_size, num_heads, fused_lepe: of :class:`ContMix`.
        mlp_ratio: MLP hidden width ``int(dim * mlp_ratio)``.
        res_scale: apply the layer scales to the residual instead of the branch.
        ls_init_value: layer-scale initial value, ``None`` for no layer scale.
        drop_path: stochastic-depth rate of both branches (training only).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        smk_size: int = 5,
        num_heads: int = 2,
        mlp_ratio: float = 4.0,
        *,
        res_scale: bool = False,
        ls_init_value: float | None = None,
        drop_path: float = 0.0,
        fused_lepe: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path!r}")
        hidden = int(dim * mlp_ratio)
        if hidden <= 0:
            raise ValueError(f"mlp_ratio={mlp_ratio!r} gives no hidden channels")
        self.res_scale = res_scale
        self.drop_path = drop_path
        self.dwconv1 = _ResDWConv(dim)
        self.norm1 = _LayerNorm2d(dim, eps=1e-6)
        self.mixer = ContMix(dim, kernel_size, smk_size, num_heads, fused_lepe=fused_lepe)
        self.dwconv2 = _ResDWConv(dim)
        self.norm2 = _LayerNorm2d(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.GELU(), _ResDWConv(hidden), _GRN(hidden), nn.Conv2d(hidden, dim, 1)
        )
        scale = ls_init_value is not None
        self.ls1 = _LayerScale(dim, ls_init_value) if scale else nn.Identity()
        self.ls2 = _LayerScale(dim, ls_init_value) if scale else nn.Identity()

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)
        return x * mask / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv1(x)
        y = self.mixer(self.norm1(x))
        x = self.ls1(x) + self._drop(y) if self.res_scale else x + self._drop(self.ls1(y))
        x = self.dwconv2(x)
        y = self.mlp(self.norm2(x))
        return self.ls2(x) + self._drop(y) if self.res_scale else x + self._drop(self.ls2(y))
