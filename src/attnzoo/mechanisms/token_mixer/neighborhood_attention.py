"""Neighborhood attention, 1-D and 2-D (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023,
eq. 2-3; dilation from "Dilated Neighborhood Attention Transformer", 2022; causal 1-D and the fused
view from "Faster Neighborhood Attention", NeurIPS 2024).

Per head, every query position ``i`` attends to the ``k`` (1-D) or ``k_H x k_W`` (2-D) keys of its
neighbourhood ``rho(i)``::

    NA(x_i) = softmax_{j in rho(i)}(q_i . k_j / sqrt(d) + B[j - i]) v_j,   Q, K, V = x W_{Q,K,V}

followed by the output projection. The neighbourhood is the window of ``k`` positions (per axis,
every ``dilation``-th position) centred on ``i`` and shifted inside the input at the borders, so
that every query sees exactly ``k`` keys per axis; causal 1-D windows end at ``i``. ``B`` is the
learned relative position bias with ``2k - 1`` entries per axis. The compute path is
:mod:`attnzoo.kernels.neighborhood` (tiled, no ``N x N`` scores).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_float, check_rate
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads
from attnzoo.kernels.neighborhood import neighborhood_attention
from attnzoo.registry import Card, register

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D"]

_PAPER = "Neighborhood Attention Transformer"

_LEDGER_COMMON = (
    "Windows follow NATTEN: clamped (shifted inside at the borders, never zero-padded), dilation "
    "splits each axis into interleaved groups, causal windows end at the query and shrink at the "
    "start. Verified against natten 0.21.7 (flex-fna backend on CPU, fp32) for odd/even kernels, "
    "dilation and causal axes.",
    "Relative position bias uses the NAT/DiNAT (NATTEN <= 0.17) layout rpb (h, 2k-1[, 2k-1]) indexed "
    "by (j - i)/dilation + k - 1, so NAT/DiNAT checkpoints load as is; NATTEN >= 0.20 removed RPB, "
    "so RPB is checked against the naive reference and NATTEN <= 0.17's pb_start rule, not run "
    "against natten.",
    "rel_pos_bias=True by default as in the NAT/DiNAT papers; NATTEN >= 0.20's modules have no RPB "
    "(use rel_pos_bias=False for that model).",
    "Inputs smaller than kernel_size * dilation raise ValueError (as NATTEN >= 0.20); NATTEN <= 0.17 "
    "modules zero-padded such inputs before the qkv projection and cropped after.",
    "Even kernel sizes are allowed as in NATTEN >= 0.20 (k//2 keys before, k//2 - 1 after); the "
    "papers and NATTEN <= 0.17 use odd kernels only. kernel_size=1 (each query attends only to "
    "itself) is accepted; NATTEN requires kernel_size >= 2.",
    "NATTEN's strided NA (stride > 1) and neighbourhood cross-attention (additional_keys) are not "
    "implemented.",
)


def _pair(value: int | tuple[int, ...], nd: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * nd
    if (
        not isinstance(value, tuple)
        or len(value) != nd
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
    if any(v < 1 for v in value):
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


class _NeighborhoodAttention(TokenMixer):
    """Shared body of the 1-D and 2-D modules; ``_nd`` is the number of spatial axes."""

    _nd: int

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, ...],
        dilation: int | tuple[int, ...],
        *,
        causal: bool,
        rel_pos_bias: bool,
        qkv_bias: bool,
        qk_scale: float | None,
        attn_drop: float,
        proj_drop: float,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        if qk_scale is not None:
            check_float(qk_scale, "qk_scale", positive=True)
        check_rate(attn_drop, "attn_drop")
        check_rate(proj_drop, "proj_drop")
        for name, flag in (("causal", causal), ("rel_pos_bias", rel_pos_bias), ("qkv_bias", qkv_bias)):
            check_bool(flag, name)
        self.dim = dim
        self.num_heads = num_heads
        self.kernel_size = _pair(kernel_size, self._nd, "kernel_size")
        self.dilation = _pair(dilation, self._nd, "dilation")
        self.causal = causal
        self.scale = float(qk_scale) if qk_scale is not None else (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        for axis, (n, k, d) in enumerate(zip(size, self.kernel_size, self.dilation, strict=True)):
            if k * d > n:
                raise ValueError(
                    f"size={tuple(size)} is too small for kernel_size={self.kernel_size} and "
                    f"dilation={self.dilation}: axis {axis} needs at least {k * d} positions"
                )
        b, n_tok, _ = x.shape
        head_dim = self.dim // self.num_heads
        qkv = self.qkv(x).reshape(b, *size, 3, self.num_heads, head_dim)
        q, k, v = qkv.movedim(-2, 1).unbind(dim=-2)  # each (B, h, *size, d)
        out = neighborhood_attention(
            q,
            k,
            v,
            self.kernel_size,
            self.dilation,
            self.causal,
            self.rpb,
            scale=self.scale,
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        out = merge_heads(out.reshape(b, self.num_heads, n_tok, head_dim))
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, causal={self.causal}, rel_pos_bias={self.rpb is not None}"
        )


@register(
    Card(
        name="neighborhood_attention_1d",
        aliases=("na1d",),
        family="token_mixer",
        summary="Softmax attention of each token to its k nearest tokens (dilated, causal optional).",
        paper=_PAPER,
        arxiv="2204.07143",
        year=2023,
        official_repo="SHI-Labs/NATTEN",
        parity="oracle",
        time_complexity="O(N k C + N C^2)",
        memory_complexity="O(N C + h N (t + k - 1)) with query tile t (default 64)",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        key_padding_note="windows are clamped inside [0, N) to keep k keys, so near a sequence's end "
        "they would slide onto padding instead of inwards: the unpadded neighbourhoods depend on each "
        "sequence's own length",
        ledger=_LEDGER_COMMON,
        tiny={"dim": 8, "num_heads": 2, "kernel_size": 3, "dilation": 2},
        sweep={
            "num_heads": (1, 2),
            "kernel_size": (3, 5),
            "dilation": (1, 2),
            "causal": (False, True),
            "rel_pos_bias": (True, False),
            "size": (10, 14),
        },
        bench={"dim": 256, "num_heads": 4, "kernel_size": 31},
        conformance={
            "skip": {
                "export_dynamic_size": "the tiled kernel (attnzoo.kernels.neighborhood) plans its query "
                "tiles in Python from N (tile = min(64, N // dilation), tile count, key regions), so a "
                "program traced with a dynamic N only holds for lengths with the traced tiling"
            }
        },
    )
)
class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1-D neighborhood attention on ``x (B, L, C)`` -> ``(B, L, C)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        kernel_size: window k (keys per query); ``kernel_size * dilation <= L`` is required.
        dilation: step between neighbours.
        causal: windows end at the query (``[i - (k-1)*dilation, i]``).
        rel_pos_bias: learn the relative position bias ``rpb (h, 2k - 1)``.
        qkv_bias: bias on the fused Q/K/V projection.
        qk_scale: score scale; ``head_dim ** -0.5`` when ``None``.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
    """

    _nd = 1

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        kernel_size: int = 7,
        dilation: int = 1,
        *,
        causal: bool = False,
        rel_pos_bias: bool = True,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            kernel_size,
            dilation,
            causal=causal,
            rel_pos_bias=rel_pos_bias,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )


@register(
    Card(
        name="neighborhood_attention_2d",
        aliases=("na2d", "nat", "dinat"),
        family="token_mixer",
        summary="Softmax attention of each pixel to its k x k neighbourhood (dilated), windows clamped.",
        paper=_PAPER,
        arxiv="2204.07143",
        year=2023,
        official_repo="SHI-Labs/NATTEN",
        parity="oracle",
        time_complexity="O(N k_H k_W C + N C^2), N = H W",
        memory_complexity="O(N C + h N (t_H + k_H - 1)(t_W + k_W - 1)), query tile t_H x t_W = 4 x 8",
        layouts=("BNC",),
        spatial_dims=2,
        causal=False,
        ledger=(
            *_LEDGER_COMMON,
            "In a timm ViT (attnzoo.integrations.timm) the mixer sees the H x W patch tokens only: class "
            "and register tokens get a separate global softmax attention over all tokens (own qkv/proj, "
            "timm's layout), so patch tokens never read them (in timm's Attention they do).",
        ),
        tiny={"dim": 8, "num_heads": 2, "kernel_size": 3},
        sweep={"num_heads": (1, 2), "kernel_size": (3, 5), "rel_pos_bias": (True, False), "size": (5, 8)},
        bench={"dim": 128, "num_heads": 4, "kernel_size": 7},
    )
)
class NeighborhoodAttention2D(_NeighborhoodAttention):
    """2-D neighborhood attention on ``x (B, H*W, C)`` (row-major) with ``size=(H, W)`` -> ``(B, H*W, C)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        kernel_size: window ``k`` or ``(k_H, k_W)``; ``k * dilation`` must fit in ``H`` and ``W``.
        dilation: ``d`` or ``(d_H, d_W)``.
        rel_pos_bias: learn the relative position bias ``rpb (h, 2k_H - 1, 2k_W - 1)``.
        qkv_bias: bias on the fused Q/K/V projection.
        qk_scale: score scale; ``head_dim ** -0.5`` when ``None``.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
    """

    _nd = 2

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        kernel_size: int | tuple[int, int] = 7,
        dilation: int | tuple[int, int] = 1,
        *,
        rel_pos_bias: bool = True,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            kernel_size,
            dilation,
            causal=False,
            rel_pos_bias=rel_pos_bias,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )
