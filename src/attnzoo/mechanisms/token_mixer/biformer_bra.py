"""Bi-level routing attention (Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing
Attention", CVPR 2023, eq. 1-6).

The ``(H, W)`` grid is cut into ``S x S`` regions (``S = n_win``, ``R = S^2`` regions of
``T = HW / R`` tokens). With ``Q, K, V = X W_{q,k,v}`` (per token):

* region level (eq. 2-4): ``Q^r, K^r`` are the per-region means of ``Q, K``;
  ``A^r = (scale Q^r) (K^r)^T`` (``R x R``) and ``I^r = topk(A^r)`` picks, for every query
  region, the ``topk`` key regions it reads (a region may pick itself; not differentiable);
* token level (eq. 5-6): ``O_i = softmax(scale Q_i K_g^T) V_g`` for the queries ``i`` of region
  ``r``, where ``K_g, V_g`` are the tokens of the regions ``I^r`` concatenated, multi-head over
  contiguous channel chunks; then ``out = W_o (O + LePE(V))`` with ``LePE`` a depthwise
  ``k x k`` convolution of ``V`` as a whole image (zero padding, crossing region borders).

``scale = qk_dim ** -0.5`` for both levels (the full query/key width, not the head width), as in
the authors' code. With ``auto_pad`` a grid not divisible by ``n_win`` is zero-padded at the
bottom/right before the projection and the output cropped back, exactly as the official
``ops/bra_legacy.py`` does (padded pixels are not masked).

Compute path (see :func:`attnzoo.kernels.grouped.routed_region_attention`): the routed key/value
regions are read with ``index_select`` on a ``(B*R, T, C)`` view and attended with SDPA. The
forward holds ``topk`` copies of K/V as the official ``torch.gather`` does, but no
``(B*R, h, T, topk*T)`` score/probability tensors, and the backward is one ``index_add`` into a
K/V-sized buffer instead of the official gather-from-``expand`` backward that allocates ``R`` times
K/V (official issues #21 and #50). A block-sparse mask over all keys would avoid the copies at
``R / topk`` times the score FLOPs, which is worse for the released configurations (topk 1/4/16 of
49 regions). In inference (no autograd) the gather runs in chunks of query regions so the copies
never exceed the size of K/V. ``topk == n_win**2`` skips routing and runs dense attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_float, check_int
from attnzoo.families import TokenMixer
from attnzoo.kernels.grouped import routed_region_attention
from attnzoo.registry import Card, register

__all__ = ["BiLevelRoutingAttention"]


@register(
    Card(
        name="biformer_bra",
        aliases=("bra", "bi_level_routing_attention", "biformer"),
        family="token_mixer",
        summary="Region-to-region top-k routing, then token attention inside the routed regions (+LePE).",
        paper="BiFormer: Vision Transformer with Bi-Level Routing Attention",
        arxiv="2303.08810",
        year=2023,
        official_repo="rayleizhu/BiFormer",
        official_commit="1697bbbeafb8680524898f1dcaac10defd0604be",
        parity="official",
        parity_fixtures=("biformer_bra",),
        time_complexity=(
            "O(N C (2 C_qk + C) + N topk (N / n_win^2) (C_qk + C) + n_win^4 C_qk + N C k^2 + N C^2)"
        ),
        memory_complexity=(
            "O(topk N (C_qk + C) + N C) with autograd (topk copies of K/V, no score matrix); "
            "O(N C) in inference (chunked gather)"
        ),
        layouts=("BNC",),
        spatial_dims=2,
        ledger=(
            "Layout: attnzoo takes x (B, H*W, C) with size=(H, W); the official module takes NHWC "
            "(B, H, W, C). The converter maps qkv.qkv.* -> qkv.*, wo.* -> proj.*, lepe.* -> lepe.*.",
            "Compute path: index_select of the routed K/V regions + SDPA; the official code gathers "
            "from an expand-ed (B, R, R, T, C) view and keeps (B*R, h, T, topk*T) scores and "
            "probabilities for backward, whose gather backward allocates R x K/V (its issues #21/#50). "
            "Same function; lower peak memory and time forward and backward (see the test file). "
            "Without autograd the gather runs in chunks of query regions whose copies never exceed "
            "K/V, so inference memory is O(N C) for any topk (the official holds topk copies).",
            "Scale: qk_dim ** -0.5 (full query/key width, not head_dim ** -0.5) for routing and "
            "token attention, as the official code (kept by the authors for their checkpoints). "
            "qk_scale=0.0 is rejected; the official `qk_scale or ...` silently treats 0 as None.",
            "auto_pad defaults to True here (official default False, which asserts H and W "
            "divisible by n_win); with auto_pad=False attnzoo raises ValueError. Padding follows "
            "ops/bra_legacy.py: zero pixels added bottom/right BEFORE the qkv projection, so padded "
            "pixels carry bias-valued q/k/v and are not masked (they enter region means, routing, "
            "keys/values and LePE). The paper assumes H, W divisible by S; the refactored "
            "ops/bra_nchw.py pads after the projection and excludes padding from the region means, "
            "so it differs from both whenever padding occurs.",
            "Routing is non-differentiable (indices under no_grad), as the official default "
            "diff_routing=False; param_routing, diff_routing, soft_routing and kv_downsample_mode "
            "other than 'identity' are not implemented (unused by the released BiFormer-T/S/B); "
            "the adapter rejects them. param_attention='qkv' (no output linear) is out_proj=False.",
            "side_dwconv must be odd (0 disables LePE); the official module builds an even kernel "
            "whose output does not match the map and fails at the addition.",
            "topk must be in [1, n_win^2]; topk == n_win^2 runs dense attention without routing "
            "(same function). The official Block's topk=-1/-2 (plain attention) is not this module.",
            "Under attnzoo.capture one (B*n_win^2, h, T, topk*T) matrix per call is recorded: each "
            "query region (region-major order) against its routed keys.",
            "In a timm ViT (attnzoo.integrations.timm) the mixer sees the H x W patch tokens only: class "
            "and register tokens get a separate global softmax attention over all tokens (own qkv/proj, "
            "timm's layout), so patch tokens never read them (in timm's Attention they do).",
        ),
        tiny={"dim": 16, "num_heads": 2, "n_win": 2, "topk": 2, "side_dwconv": 3},
        sweep={
            "num_heads": (1, 2),
            "n_win": (2, 3),
            "topk": (1, 2),
            "side_dwconv": (0, 3),
            "size": (2, 8),
        },
        bench={"dim": 64, "num_heads": 2, "n_win": 7, "topk": 1, "side_dwconv": 5},
        conformance={"sizes": [(5, 7), (4, 4), (2, 3)]},
    )
)
class BiLevelRoutingAttention(TokenMixer):
    """Bi-level routing attention on ``x (B, H*W, C)`` with ``size=(H, W)``; returns ``(B, H*W, C)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim`` and ``qk_dim``.
        n_win: regions per side (``n_win**2`` regions).
        topk: key regions each query region attends to, ``1 <= topk <= n_win**2``.
        qk_dim: query/key width (default ``dim``).
        qk_scale: score scale for routing and attention (default ``qk_dim ** -0.5``).
        side_dwconv: LePE depthwise kernel size (odd), ``0`` for no LePE.
        qkv_bias: bias of the fused q/k/v projection.
        out_proj: apply the output linear ``W_o`` (official ``param_attention='qkvo'``).
        auto_pad: zero-pad H, W up to multiples of ``n_win`` (official semantics, see ledger).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        topk: int = 4,
        *,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        side_dwconv: int = 3,
        qkv_bias: bool = True,
        out_proj: bool = True,
        auto_pad: bool = True,
    ) -> None:
        super().__init__()
        check_int(dim, "dim")
        check_int(num_heads, "num_heads")
        check_int(n_win, "n_win")
        check_int(topk, "topk")
        qk_dim = dim if qk_dim is None else check_int(qk_dim, "qk_dim")
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_divisible(qk_dim, num_heads, "qk_dim", "num_heads")
        if topk > n_win * n_win:
            raise ValueError(f"topk={topk} exceeds the number of regions n_win**2={n_win * n_win}")
        for name, flag in (("qkv_bias", qkv_bias), ("out_proj", out_proj), ("auto_pad", auto_pad)):
            check_bool(flag, name)
        if check_int(side_dwconv, "side_dwconv", minimum=0) % 2 == 0 and side_dwconv > 0:
            raise ValueError(f"side_dwconv must be 0 (no LePE) or a positive odd int, got {side_dwconv}")
        if qk_scale is not None:
            check_float(qk_scale, "qk_scale", positive=True)
        self.dim = dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.qk_dim = qk_dim
        self.scale = float(qk_scale) if qk_scale is not None else qk_dim**-0.5
        self.auto_pad = auto_pad
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=qkv_bias)
        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv else None
        )
        self.proj = nn.Linear(dim, dim) if out_proj else nn.Identity()

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, "
            f"qk_dim={self.qk_dim}, scale={self.scale:.4g}, auto_pad={self.auto_pad}"
        )

    def _route(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``(B, R, topk)`` key regions of each query region from region-mean queries and keys."""
        with torch.no_grad():
            logits = (q.mean(dim=2) * self.scale) @ k.mean(dim=2).transpose(-2, -1)
            return logits.topk(self.topk, dim=-1).indices

    def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        b, _, c = x.shape
        h, w = size
        s = self.n_win
        hp, wp = -(-h // s) * s, -(-w // s) * s
        img = x.reshape(b, h, w, c)
        if (hp, wp) != (h, w):
            if not self.auto_pad:
                raise ValueError(
                    f"size={tuple(size)} is not divisible by n_win={s}; build the module with auto_pad=True"
                )
            img = F.pad(img, (0, 0, 0, wp - w, 0, hp - h))
        rh, rw = hp // s, wp // s
        regions, tokens = s * s, rh * rw

        def to_regions(t: torch.Tensor) -> torch.Tensor:  # (B, Hp, Wp, C') -> (B, R, T, C')
            return t.reshape(b, s, rh, s, rw, t.shape[-1]).transpose(2, 3).reshape(b, regions, tokens, -1)

        def to_image(t: torch.Tensor) -> torch.Tensor:  # (B, R, T, C') -> (B, Hp, Wp, C')
            return t.reshape(b, s, s, rh, rw, t.shape[-1]).transpose(2, 3).reshape(b, hp, wp, -1)

        q, k, v = self.qkv(to_regions(img)).split([self.qk_dim, self.qk_dim, c], dim=-1)
        routes = None if self.topk == regions else self._route(q, k)
        heads = self.num_heads
        out = routed_region_attention(
            q.unflatten(-1, (heads, -1)),
            k.unflatten(-1, (heads, -1)),
            v.unflatten(-1, (heads, -1)),
            routes,
            scale=self.scale,
        )
        out = to_image(out.flatten(-2))
        if self.lepe is not None:
            out = out + self.lepe(to_image(v).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out[:, :h, :w]).reshape(b, h * w, c)
