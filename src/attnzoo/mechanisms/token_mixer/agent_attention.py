"""Agent attention (Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention",
ECCV 2024, arXiv 2312.08874): the agent attention module with its agent bias and its depthwise-conv
diversity-restoration term.

With queries ``Q``, keys ``K`` and values ``V`` (per head), ``n`` agent tokens ``A = pool(Q)``
(adaptive average pooling of the grid queries to a ``sqrt(n) x sqrt(n)`` grid) and
``sigma = softmax``::

    V_A = sigma(A K^T / sqrt(d) + B_1) V                  (agents aggregate the keys, n x N_k)
    O   = sigma(Q A^T / sqrt(d) + B_2) V_A + DWC(V)       (queries read the agents, N x n)

``B_1`` / ``B_2`` are the agent / query position biases: a 7 x 7 map per (head, agent) resized
bilinearly to the key / query grid, plus per-row and per-column biases; prefix tokens (class
token) get their own learned bias and no DWC term. Both softmax steps run through
:func:`attnzoo.kernels.attention`. Cost is linear in N: O(N n C).

``agent_attention`` is the DeiT form (a class token, full-resolution keys);
``agent_attention_pvt`` is the PVT form (no prefix token, keys/values from a strided-conv
spatial reduction by ``sr_ratio``, DWC on the upsampled reduced values).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int, check_rate
from attnzoo.families import TokenMixer
from attnzoo.kernels import attention, merge_heads, split_heads
from attnzoo.layout import bchw_to_bnc, bnc_to_bchw
from attnzoo.registry import Card, register

__all__ = ["AgentAttention", "AgentAttentionPVT"]

_PAPER = "Agent Attention: On the Integration of Softmax and Linear Attention"
_REPO = "LeapLabTHU/Agent-Attention"
_COMMIT = "207ce3eb357b22ef8a15f8fa21cd1f14697bbaba"

_SHARED_LEDGER = (
    "Any H x W grid, including non-square ones (official issue #39: the official code infers "
    "H = W = sqrt(N) and sizes the row/column biases for one fixed square `window`): the 7x7 "
    "an/na biases are resized bilinearly (align_corners=False) to the actual grid, as officially, and "
    "the per-row (ah, ha) and per-column (aw, wa) biases, stored for the reference grid `window`, are "
    "resized with 1-D linear interpolation (align_corners=False) to the actual H and W; at the "
    "reference grid this is the identity, so official checkpoints reproduce the official outputs.",
    "Agents are pooled with adaptive average pooling to sqrt(agent_num) x sqrt(agent_num) on any grid "
    "(PyTorch's overlapping bins when H or W is not a multiple, repeated cells when smaller), as the "
    "official nn.AdaptiveAvgPool2d does; agent_num must be a perfect square (ValueError otherwise).",
    "Parameter layout: separate q (dim -> dim) and kv (dim -> 2 dim, [k | v]) projections and compact "
    "bias shapes ah (h, n, Hr), aw (h, n, Wr), ha (h, H, n), wa (h, W, n), prefix biases ac (h, n, P), "
    "ca (h, P, n); attnzoo.official.agent_attention_* convert the official checkpoints (fused qkv, "
    "5-D bias tensors).",
)


def _side(agent_num: int) -> int:
    side = math.isqrt(check_int(agent_num, "agent_num"))
    if side * side != agent_num:
        raise ValueError(f"agent_num must be a positive perfect square (agents form a grid), got {agent_num}")
    return side


def _pair(window: int | tuple[int, int]) -> tuple[int, int]:
    if not isinstance(window, (tuple, list)):
        side = check_int(window, "window")
        return side, side
    if len(window) != 2:
        raise ValueError(f"window must be a positive int or a pair of positive ints (H, W), got {window!r}")
    return check_int(window[0], "window"), check_int(window[1], "window")


def _resize_last(bias: torch.Tensor, length: int) -> torch.Tensor:
    """Linear (align_corners=False) resize of ``bias (a, b, L)`` along its last axis to ``length``."""
    if bias.shape[-1] == length:
        return bias
    return F.interpolate(bias, size=length, mode="linear", align_corners=False)


def _grid_bias(
    grid: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Position bias on an ``(H, W)`` grid, flattened: ``(h, n, H*W)``.

    The 7x7 ``grid (h, n, 7, 7)`` is resized bilinearly and the per-row ``rows (h, n, H_r)`` and
    per-column ``cols (h, n, W_r)`` biases linearly (all align_corners=False) to ``size``.
    """
    grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    rows = _resize_last(rows, size[0])
    cols = _resize_last(cols, size[1])
    return (grid + rows[..., :, None] + cols[..., None, :]).flatten(2)


@register(
    Card(
        name="agent_attention",
        aliases=("agent_attention_deit", "agent_attn"),
        family="token_mixer",
        summary="Softmax attention through n pooled agent tokens (linear in N), with agent/position "
        "biases, a depthwise-conv term on V and class-token support (DeiT form).",
        paper=_PAPER,
        arxiv="2312.08874",
        year=2024,
        official_repo=_REPO,
        official_commit=_COMMIT,
        parity="official",
        parity_fixtures=("agent_attention_deit",),
        time_complexity="O(N n C + N C^2)  (n = agent_num)",
        memory_complexity="O(N C + h N n)",
        layouts=("BNC",),
        spatial_dims=2,
        variable_size=True,
        ledger=(
            *_SHARED_LEDGER,
            "DeiT form: num_prefix_tokens generalises the single class token (official: exactly one, "
            "biases ac (1, h, n, 1) / ca (1, h, 1, n)) to P prefix tokens with biases (h, n, P) / (h, P, n).",
            "The grid size comes from size=(H, W) instead of the official h = w = int(sqrt(N)).",
            "In a timm ViT (attnzoo.integrations.timm) class and register tokens are its num_prefix_tokens "
            "(native, DeiT form: queries and keys, no DWC term); vit_attention/swap check or set it from the "
            "model's num_prefix_tokens.",
        ),
        tiny={"dim": 16, "num_heads": 2, "agent_num": 4, "window": 4, "num_prefix_tokens": 1},
        sweep={
            "dim": (16, 32),
            "num_heads": (1, 2, 4),
            "agent_num": (4, 9, 16),
            "window": (2, 4),
            "num_prefix_tokens": (0, 1),
            "size": (2, 8),
        },
        bench={"dim": 384, "num_heads": 6, "agent_num": 49, "window": 14, "num_prefix_tokens": 1},
    )
)
class AgentAttention(TokenMixer):
    """Agent attention on ``x (B, P + H*W, C)`` with ``size=(H, W)``; returns ``(B, P + H*W, C)``.

    The first ``P = num_prefix_tokens`` tokens (class/distillation tokens) take part as queries
    and keys but are not pooled into agents and get no DWC term.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        agent_num: number of agent tokens n; a perfect square.
        window: reference grid ``(H, W)`` (or one int for a square grid) the per-row / per-column
            position biases are stored for; other grids resize them.
        num_prefix_tokens: P, tokens before the grid; needs ``sr_ratio == 1``.
        sr_ratio: spatial reduction of keys/values by a ``sr_ratio`` strided conv + LayerNorm (PVT).
        qkv_bias: bias on the q and kv projections.
        attn_drop: dropout on both attention maps (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        agent_num: int = 49,
        window: int | tuple[int, int] = 14,
        num_prefix_tokens: int = 1,
        sr_ratio: int = 1,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        self.pool_side = _side(agent_num)
        win_h, win_w = _pair(window)
        check_int(num_prefix_tokens, "num_prefix_tokens", minimum=0)
        check_int(sr_ratio, "sr_ratio")
        check_bool(qkv_bias, "qkv_bias")
        check_rate(attn_drop, "attn_drop")
        check_rate(proj_drop, "proj_drop")
        if sr_ratio > 1 and num_prefix_tokens > 0:
            raise ValueError(
                "sr_ratio > 1 with num_prefix_tokens > 0 is not defined (neither the paper nor the official "
                "code reduces keys of prefix tokens); use num_prefix_tokens=0 with sr_ratio > 1"
            )
        if win_h < sr_ratio or win_w < sr_ratio:
            raise ValueError(f"window={(win_h, win_w)} must be at least sr_ratio={sr_ratio} on each side")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.agent_num = agent_num
        self.window = (win_h, win_w)
        self.num_prefix_tokens = num_prefix_tokens
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop

        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.dwc = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        h, n = num_heads, agent_num
        kv_h, kv_w = win_h // sr_ratio, win_w // sr_ratio
        self.an_bias = nn.Parameter(torch.empty(h, n, 7, 7))
        self.na_bias = nn.Parameter(torch.empty(h, n, 7, 7))
        self.ah_bias = nn.Parameter(torch.empty(h, n, kv_h))
        self.aw_bias = nn.Parameter(torch.empty(h, n, kv_w))
        self.ha_bias = nn.Parameter(torch.empty(h, win_h, n))
        self.wa_bias = nn.Parameter(torch.empty(h, win_w, n))
        biases = [self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias]
        if num_prefix_tokens:
            self.ac_bias = nn.Parameter(torch.empty(h, n, num_prefix_tokens))
            self.ca_bias = nn.Parameter(torch.empty(h, num_prefix_tokens, n))
            biases += [self.ac_bias, self.ca_bias]
        for b in biases:
            nn.init.trunc_normal_(b, std=0.02)

    def _agent_bias(self, kv_size: tuple[int, int]) -> torch.Tensor:
        """Bias of agents attending to keys: ``(h, n, P + H_k*W_k)``."""
        grid = _grid_bias(self.an_bias, self.ah_bias, self.aw_bias, kv_size)
        if self.num_prefix_tokens:
            grid = torch.cat([self.ac_bias, grid], dim=-1)
        return grid

    def _query_bias(self, size: tuple[int, int]) -> torch.Tensor:
        """Bias of queries attending to agents: ``(h, P + H*W, n)``."""
        grid = _grid_bias(self.na_bias, self.ha_bias.transpose(1, 2), self.wa_bias.transpose(1, 2), size)
        grid = grid.transpose(1, 2)
        if self.num_prefix_tokens:
            grid = torch.cat([self.ca_bias, grid], dim=-2)
        return grid

    def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        p = self.num_prefix_tokens
        hh, ww = size
        if self.sr_ratio > 1 and (hh < self.sr_ratio or ww < self.sr_ratio):
            raise ValueError(f"size={tuple(size)} is smaller than sr_ratio={self.sr_ratio} on one side")
        q = self.q(x)
        if self.sr_ratio > 1:
            reduced = self.sr(bnc_to_bchw(x, (hh, ww)))
            kv_size = (reduced.shape[-2], reduced.shape[-1])
            kv_in = self.norm(bchw_to_bnc(reduced))
        else:
            kv_size = (hh, ww)
            kv_in = x
        k, v = self.kv(kv_in).chunk(2, dim=-1)

        agents = F.adaptive_avg_pool2d(bnc_to_bchw(q[:, p:], (hh, ww)), self.pool_side)
        agents = split_heads(bchw_to_bnc(agents), self.num_heads)
        qh, kh, vh = (split_heads(t, self.num_heads) for t in (q, k, v))
        drop = self.attn_drop if self.training else 0.0
        agent_v = attention(agents, kh, vh, bias=self._agent_bias(kv_size), scale=self.scale, dropout_p=drop)
        out = merge_heads(
            attention(qh, agents, agent_v, bias=self._query_bias((hh, ww)), scale=self.scale, dropout_p=drop)
        )

        v_grid = bnc_to_bchw(v[:, p:], kv_size)
        if self.sr_ratio > 1:
            v_grid = F.interpolate(v_grid, size=(hh, ww), mode="bilinear", align_corners=False)
        local = bchw_to_bnc(self.dwc(v_grid))
        out = torch.cat([out[:, :p], out[:, p:] + local], dim=1) if p else out + local
        return self.proj_drop(self.proj(out))


@register(
    Card(
        name="agent_attention_pvt",
        aliases=("agent_pvt",),
        family="token_mixer",
        summary="Agent attention with PVT spatial reduction of keys/values (strided conv + LayerNorm) "
        "and the depthwise-conv term on upsampled values.",
        paper=_PAPER,
        arxiv="2312.08874",
        year=2024,
        official_repo=_REPO,
        official_commit=_COMMIT,
        parity="official",
        parity_fixtures=("agent_attention_pvt",),
        time_complexity="O(N n C + N C^2)  (n = agent_num; keys N / r^2 with r = sr_ratio)",
        memory_complexity="O(N C + h N n)",
        layouts=("BNC",),
        spatial_dims=2,
        variable_size=True,
        ledger=(
            *_SHARED_LEDGER,
            "Official qk_scale is accepted and ignored (scale is always head_dim ** -0.5); attnzoo has no "
            "qk_scale argument.",
            "Grids not divisible by sr_ratio: the strided conv floors (H // r, W // r) and V is upsampled "
            "back to (H, W); the official code needs H, W divisible by sr_ratio (its reshape of K/V uses "
            "N // r^2).",
            "The reference grid comes from window=(H, W) instead of the official num_patches (H = W = "
            "sqrt(num_patches)); the adapter converts.",
            "In a timm ViT (attnzoo.integrations.timm) the mixer sees the H x W patch tokens only: class "
            "and register tokens get a separate global softmax attention over all tokens (own qkv/proj, "
            "timm's layout), so patch tokens never read them (in timm's Attention they do).",
        ),
        tiny={"dim": 16, "num_heads": 2, "agent_num": 4, "window": 4, "sr_ratio": 2},
        sweep={
            "dim": (16, 32),
            "num_heads": (1, 2, 4),
            "agent_num": (4, 9),
            "window": (2, 4),
            "sr_ratio": (1, 2),
            "size": (2, 8),
        },
        bench={"dim": 64, "num_heads": 1, "agent_num": 9, "window": 56, "sr_ratio": 1},
    )
)
class AgentAttentionPVT(AgentAttention):
    """Agent attention of Agent-PVT on ``x (B, H*W, C)`` with ``size=(H, W)``; no prefix tokens.

    Same arguments as :class:`AgentAttention`, with ``num_prefix_tokens`` fixed to 0 and
    ``sr_ratio`` the spatial reduction of keys and values.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        agent_num: int = 49,
        window: int | tuple[int, int] = 14,
        sr_ratio: int = 1,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            agent_num=agent_num,
            window=window,
            num_prefix_tokens=0,
            sr_ratio=sr_ratio,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )
