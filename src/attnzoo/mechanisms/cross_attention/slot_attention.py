"""Slot attention with SLASH's attention refining kernel and position embedding (Kim et al.,
"Shepherding Slots to Objects: Towards Stable and Robust Object-Centric Learning", CVPR 2023,
Sec. 3-4; Slot Attention of Locatello et al., NeurIPS 2020, Alg. 1).

``K`` slots compete for ``N`` input tokens over ``T`` iterations. Per iteration, with
``A_ij`` the weight of input ``i`` for slot ``j`` (per head)::

    logits_ij = <k(LN(x_i)), q(LN(s_j))> / sqrt(D / h)
    logits    = ARK(logits)                  (optional: a k x k kernel over the input grid, per slot)
    A_ij      = softmax_j(logits_ij / tau) + eps           (softmax over SLOTS, not inputs)
    W_ij      = A_ij / sum_i A_ij                          (weighted mean over inputs)
    s_j       = GRU(sum_i W_ij v(LN(x_i)), s_j)
    s_j       = s_j + PE(p_j),  p_j = sigmoid(MLP_p(LN(s_j))) - 1/2      (optional IPPE)
    s_j       = s_j + MLP(LN(s_j))

ARK ``"wnconv"`` uses the weight-normalised kernel ``softmax(w / ||w||_2)`` (non-negative, sums to
one); ``"conv"`` a plain learned kernel (ablation). With ``smoothing="none"`` and no position
prediction this is the original Slot Attention. The initial slots ``x`` are an explicit input;
:meth:`SlotAttention.sample_slots` draws them from the learned Gaussian ``N(mu, |sigma| + eps)``.
"""

from __future__ import annotations

import itertools
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.capture import capturing, module_scope, record
from attnzoo.checks import (
    check_bool,
    check_divisible,
    check_float,
    check_int,
    check_size,
    check_tensor,
    tracing,
)
from attnzoo.families import CrossAttention
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.registry import Card, register

__all__ = ["SlotAttention", "SlotAttentionOutput", "normalized_ark_kernel"]

Smoothing = Literal["none", "conv", "wnconv"]
PositionMLP = Literal["base", "small", "big"]


class SlotAttentionOutput(NamedTuple):
    """Everything one slot-attention forward computes.

    Attributes:
        slots: ``(B, K, D)`` final slots.
        attn: ``(B, h, N, K)`` last iteration's weights renormalised over inputs (sum_i = 1).
        attns: per iteration, ``(B, h, N, K)`` softmax over slots (+ eps) after ARK.
        attns_origin: per iteration, the same before ARK.
        positions: per iteration, ``(B, K, P)`` predicted slot positions in [-1/2, 1/2] (IPPE only).
    """

    slots: torch.Tensor
    attn: torch.Tensor
    attns: tuple[torch.Tensor, ...]
    attns_origin: tuple[torch.Tensor, ...]
    positions: tuple[torch.Tensor, ...]


def normalized_ark_kernel(weight: torch.Tensor, times: int = 1) -> torch.Tensor:
    """``f(w) = softmax(w / ||w||_2)`` over the taps of each ``(k, k)`` kernel, applied ``times`` times."""
    shape = weight.shape
    w = weight.reshape(*shape[:-2], -1)
    for _ in range(times):
        w = (w / torch.linalg.vector_norm(w, dim=-1, keepdim=True)).softmax(dim=-1)
    return w.reshape(shape)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


@register(
    Card(
        name="slot_attention",
        aliases=("slash", "slash_slot_attention", "shepherding_slots"),
        family="cross_attention",
        summary="Iterative slot attention (softmax over slots, GRU update) with SLASH's attention "
        "refining kernel over the input grid and an optional slot position predictor/encoder.",
        paper="Shepherding Slots to Objects: Towards Stable and Robust Object-Centric Learning",
        arxiv="2303.17842",
        year=2023,
        official_repo="object-understanding/SLASH",
        official_commit="b6e9aca9ce7f1393d3b1c2a06902f8815bfd1010",
        parity="official",
        parity_fixtures=("slash_slot_attention",),
        time_complexity="O(T (N K D + K D^2) + N C D)  (T iterations, k^2 N K h more with ARK)",
        memory_complexity="O(N K h + N D + K D)",
        layouts=("BNC",),
        spatial_dims=1,
        ledger=(
            "Initial slots are an explicit input x (B, K, D) (officially drawn inside forward with "
            "torch.normal(mu, |sigma| + eps)); sample_slots(batch, K, generator=...) and "
            "initial_slots(noise) = mu + (|sigma| + eps) * noise reproduce the official draw.",
            "ARK 'wnconv': the official WNConv overwrites its weight with softmax(w/||w||) at EVERY call "
            "(through .data, so no gradient reaches it and the optimiser's parameter is orphaned), so "
            "iteration t of the first forward uses f^(t+1)(w0) and every later forward keeps iterating. "
            "attnzoo applies f once per call with gradients (the paper's normalised kernel); "
            "official_ark_iterates=True reproduces the first official forward (f^(t+1) at iteration t) "
            "without mutating the module, so later forwards do not drift as they do officially.",
            "ARK grid: size=(H, W) of the context (any H x W); officially H = W = int(sqrt(N)).",
            "Odd smoothing_size only (the official padding k//2 breaks the grid for even k); "
            "ATTN_SMOOTH 'gaussian' (a random blur sigma per call) is not offered.",
            "Key padding (not official): mask (B, N) True = real input; masked inputs get weight 0 "
            "before the weighted mean; every row needs a True.",
            "IPPE (eval, no ground truth): p = sigmoid(MLP_p(LN(s))) - 0.5, s += PE(p), as officially; "
            "training-time ground-truth matching, batch fusion and INIT_USING_SUP are not offered.",
            "Parameters: official slots_mu/slots_sigma (1, 1, D) -> (D,), knconv.weight (1, 1, k, k) -> "
            "ark_weight (k, k), pos_predictor.{layer_norm,mlp} -> pos_norm/pos_mlp, "
            "pos_encoder.encoder -> pos_encoder; other keys unchanged "
            "(attnzoo.official.slash_slot_attention converts).",
            "forward returns the slots; forward_details returns slots, attn, attns, attns_origin and "
            "positions like the official output dict. Capture records each iteration's softmax over "
            "slots as (B, h, K, N), kind='slot'.",
        ),
        tiny={
            "dim": 16,
            "context_dim": 8,
            "num_heads": 2,
            "num_iterations": 2,
            "mlp_hidden_dim": 24,
            "smoothing": "wnconv",
            "smoothing_size": 3,
            "position_dims": 2,
        },
        sweep={"num_heads": (1, 2), "num_iterations": (1, 2), "size": (1, 6)},
        bench={
            "dim": 64,
            "context_dim": 64,
            "num_heads": 1,
            "num_iterations": 3,
            "mlp_hidden_dim": 128,
            "smoothing": "wnconv",
            "smoothing_size": 5,
            "position_dims": 2,
            "sizes": [(16, 16), (32, 32), (64, 64)],
            "queries": 7,
        },
        conformance={
            "unused_params": ("slots_mu", "slots_sigma"),
            "context_size": (3, 4),
        },
    )
)
class SlotAttention(CrossAttention):
    """Slot attention: initial slots ``x (B, K, D)`` attend to ``context (B, N, C)``; returns ``(B, K, D)``.

    With ``smoothing`` on, the context is an ``H x W`` grid and ``size=(H, W)`` is required.

    Args:
        dim: slot channels D.
        context_dim: input channels C.
        num_heads: h; must divide ``dim``.
        num_iterations: T.
        mlp_hidden_dim: hidden size of the residual slot MLP (default ``2 * dim``).
        temperature: tau of the softmax over slots.
        eps: added to the attention weights and to ``|sigma|`` of the slot distribution.
        smoothing: ARK kernel: ``"none"``, ``"conv"`` (plain) or ``"wnconv"`` (weight-normalised).
        smoothing_size: odd kernel size of the ARK.
        position_dims: P of the slot position predictor/encoder (IPPE; 2 for centres, 4 for boxes),
            or ``None`` for no position prediction.
        position_mlp: depth of the position predictor (``"base"``, ``"small"``, ``"big"``).
        official_ark_iterates: reproduce the official WNConv's repeated normalisation (ledger).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_heads: int = 1,
        *,
        num_iterations: int = 3,
        mlp_hidden_dim: int | None = None,
        temperature: float = 1.0,
        eps: float = 1e-8,
        smoothing: Smoothing = "none",
        smoothing_size: int = 5,
        position_dims: int | None = None,
        position_mlp: PositionMLP = "base",
        official_ark_iterates: bool = False,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_int(context_dim, "context_dim")
        check_int(num_iterations, "num_iterations")
        check_int(smoothing_size, "smoothing_size")
        if mlp_hidden_dim is not None:
            check_int(mlp_hidden_dim, "mlp_hidden_dim")
        if position_dims is not None:
            check_int(position_dims, "position_dims")
        check_bool(official_ark_iterates, "official_ark_iterates")
        check_float(temperature, "temperature", positive=True)
        check_float(eps, "eps", minimum=0.0)
        if smoothing not in ("none", "conv", "wnconv"):
            raise ValueError(f"smoothing must be 'none', 'conv' or 'wnconv', got {smoothing!r}")
        if smoothing != "none" and smoothing_size % 2 == 0:
            raise ValueError(f"smoothing_size must be a positive odd int, got {smoothing_size}")
        if official_ark_iterates and smoothing != "wnconv":
            raise ValueError("official_ark_iterates only applies to smoothing='wnconv'")
        mlp_hidden_dim = 2 * dim if mlp_hidden_dim is None else mlp_hidden_dim
        self.dim = dim
        self.context_dim = context_dim
        self.context_spatial_dims = 0 if smoothing == "none" else 2
        self.num_heads = num_heads
        self.num_iterations = num_iterations
        self.temperature = float(temperature)
        self.eps = float(eps)
        self.smoothing = smoothing
        self.official_ark_iterates = official_ark_iterates
        self.scale = (dim // num_heads) ** -0.5

        self.slots_mu = nn.Parameter(torch.randn(dim))
        self.slots_sigma = nn.Parameter(torch.rand(dim))
        self.norm_input = nn.LayerNorm(context_dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.ark_weight = (
            nn.Parameter(torch.randn(smoothing_size, smoothing_size) / smoothing_size)
            if smoothing != "none"
            else None
        )
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = _mlp([dim, mlp_hidden_dim, dim])
        self.position_dims = position_dims
        if position_dims is not None:
            widths = {"base": [dim // 2, dim // 4], "small": [dim // 4], "big": [dim, dim // 4, dim // 8]}
            if position_mlp not in widths:
                raise ValueError(f"position_mlp must be 'base', 'small' or 'big', got {position_mlp!r}")
            if min(widths[position_mlp]) < 1 or dim // 4 < 1:
                raise ValueError(f"dim={dim} is too small for position_mlp={position_mlp!r}")
            self.pos_norm = nn.LayerNorm(dim)
            self.pos_mlp = _mlp([dim, *widths[position_mlp], position_dims])
            self.pos_encoder = _mlp([position_dims, dim // 4, dim // 2, dim])

    def initial_slots(self, noise: torch.Tensor) -> torch.Tensor:
        """``mu + (|sigma| + eps) * noise`` for a standard-normal ``noise (B, K, D)``."""
        check_tensor(noise, "noise", ndim=3, shape=(None, None, self.dim))
        return self.slots_mu + (self.slots_sigma.abs() + self.eps) * noise

    def sample_slots(
        self, batch: int, num_slots: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Initial slots ``(batch, num_slots, D)`` drawn from the learned Gaussian."""
        if batch <= 0 or num_slots <= 0:
            raise ValueError(f"batch and num_slots must be positive, got {batch}, {num_slots}")
        p = self.slots_mu
        noise = torch.randn(batch, num_slots, self.dim, generator=generator, device=p.device)
        return self.initial_slots(noise.to(p.dtype))

    def _ark(
        self, logits: torch.Tensor, kernel: torch.Tensor, size: tuple[int, ...] | None, iteration: int
    ) -> torch.Tensor:
        """Convolve each (batch, head, slot) map of ``logits (B, h, N, K)`` over the ``H x W`` grid."""
        if size is None:
            raise ValueError("size=(H, W) of the context grid is required with smoothing")
        if self.smoothing == "wnconv":
            kernel = normalized_ark_kernel(kernel, iteration + 1 if self.official_ark_iterates else 1)
        b, h, n, k = logits.shape
        maps = logits.permute(0, 1, 3, 2).reshape(b * h * k, 1, *size)
        out = F.conv2d(maps, kernel[None, None].to(logits.dtype), padding=kernel.shape[-1] // 2)
        return out.reshape(b, h, k, n).permute(0, 1, 3, 2)

    def _iterate(
        self,
        slots: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        size: tuple[int, ...] | None,
    ) -> SlotAttentionOutput:
        b, k_slots, d = slots.shape
        h = self.num_heads
        inputs = self.norm_input(context)
        k = split_heads(self.to_k(inputs), h)
        v = split_heads(self.to_v(inputs), h)
        keep = None if mask is None else mask[:, None, :, None].to(slots.dtype)
        attns, origins, positions = [], [], []
        attn = slots.new_empty(0)
        for t in range(self.num_iterations):
            prev = slots
            q = split_heads(self.to_q(self.norm_slots(slots)), h)
            logits = (k @ q.transpose(-2, -1)) * self.scale  # (B, h, N, K)
            origin = (logits / self.temperature).softmax(dim=-1) + self.eps
            if self.ark_weight is not None:
                logits = self._ark(logits, self.ark_weight, size, t)
            attn = (logits / self.temperature).softmax(dim=-1) + self.eps
            if keep is not None:
                attn = attn * keep
            if capturing():
                record(attn.transpose(-2, -1), (logits / self.temperature).transpose(-2, -1), kind="slot")
            attns.append(attn)
            origins.append(origin)
            attn = attn / attn.sum(dim=-2, keepdim=True)
            updates = merge_heads(attn.transpose(-2, -1) @ v)
            slots = self.gru(updates.reshape(-1, d), prev.reshape(-1, d)).reshape(b, k_slots, d)
            if self.position_dims is not None:
                pos = torch.sigmoid(self.pos_mlp(self.pos_norm(slots))) - 0.5
                positions.append(pos)
                slots = slots + self.pos_encoder(pos)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return SlotAttentionOutput(slots, attn, tuple(attns), tuple(origins), tuple(positions))

    def forward_details(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        size: tuple[int, ...] | None = None,
    ) -> SlotAttentionOutput:
        """Like ``forward`` but returns every intermediate (see :class:`SlotAttentionOutput`)."""
        check_tensor(x, "x", ndim=3, shape=(None, None, self.dim))
        check_tensor(context, "context", ndim=3, shape=(x.shape[0], None, self.context_dim))
        mask = self._check_mask(mask, context)
        if self.context_spatial_dims:
            size = check_size(size, context.shape[1], spatial_dims=2)
        with module_scope(self):
            return self._iterate(x, context, mask, size)

    @staticmethod
    def _check_mask(mask: torch.Tensor | None, context: torch.Tensor) -> torch.Tensor | None:
        if mask is None:
            return None
        check_tensor(mask, "mask", ndim=2, floating=False, finite=False, shape=context.shape[:2])
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = attend), got dtype {mask.dtype}")
        if not tracing() and not bool(mask.any(dim=1).all()):
            raise ValueError("mask leaves a sample with no input: every row needs at least one True")
        return mask

    def compute(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        size: tuple[int, ...] | None,
    ) -> torch.Tensor:
        return self._iterate(x, context, self._check_mask(mask, context), size).slots
