"""The residual block every token-mixer backbone stacks: ``x + mixer(norm(x))`` then, optionally,
``x + mlp(norm(x))`` (pre-norm, as in GPT-2, ViT and Zoology's ``TransformerBlock``).

A sequence backbone may put a short causal depthwise convolution in front of the mixer
(``x + mixer(conv(norm(x)))``), the token-shift that Based, Mamba and GLA stacks use; or it may
interleave :class:`BaseConv` blocks with the mixer blocks, as Zoology's MQAR models do. Both are
backbone options, applied alike to every mechanism.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["MLP", "BaseConv", "CausalShortConv", "MixerBlock"]


class MLP(nn.Module):
    """``Linear(C, rC) -> GELU -> Linear(rC, C)``."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, round(dim * ratio))
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CausalShortConv(nn.Module):
    """Depthwise causal convolution over tokens: ``y_t = sum_{j<k} w_j * x_{t-j}`` per channel,
    ``(B, N, C) -> (B, N, C)``; output ``t`` never sees tokens after ``t``."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size <= 0:
            raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, padding=kernel_size - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)


class BaseConv(nn.Module):
    """Zoology's gated short convolution (Arora et al., 2023, "Zoology", Sec. 4), ``(B, N, C) ->
    (B, N, C)``: ``y = conv_k(u) * (u W^T + b) + u`` with a causal depthwise convolution of kernel
    ``k``; the product lets a token carry a gated copy of its ``k - 1`` predecessors, which is how a
    following mixer finds the token after a key."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = CausalShortConv(dim, kernel_size)
        self.proj = nn.Linear(dim, dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.conv(u) * self.proj(u) + u


class MixerBlock(nn.Module):
    """Pre-norm residual block around a token mixer ``(B, N, C) -> (B, N, C)``.

    Args:
        mixer: a :class:`attnzoo.TokenMixer` of width ``dim``.
        dim: channels C.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``; ``0`` means no MLP (Zoology's
            MQAR setting, where the state mixer is the identity).
        short_conv: kernel size of a causal depthwise convolution before the mixer; ``0`` for none.
    """

    def __init__(self, mixer: nn.Module, dim: int, mlp_ratio: float = 0.0, short_conv: int = 0) -> None:
        super().__init__()
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0, got {mlp_ratio}")
        self.norm1 = nn.LayerNorm(dim)
        self.conv = CausalShortConv(dim, short_conv) if short_conv else None
        self.mixer = mixer
        self.mlp = MLP(dim, mlp_ratio) if mlp_ratio > 0 else None
        self.norm2 = nn.LayerNorm(dim) if self.mlp is not None else None

    def forward(self, x: torch.Tensor, **mixer_kwargs: Any) -> torch.Tensor:
        h = self.norm1(x)
        if self.conv is not None:
            h = self.conv(h)
        x = x + self.mixer(h, **mixer_kwargs)
        if self.mlp is not None and self.norm2 is not None:
            x = x + self.mlp(self.norm2(x))
        return x
