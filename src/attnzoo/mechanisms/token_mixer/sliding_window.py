"""Sliding-window (local) self-attention for sequences (Beltagy et al., "Longformer", 2020, sec. 3.1;
the causal form is the sliding-window attention of Mistral 7B and of Zoology/Based).

Each token attends only to the ``w`` tokens before it (and, unless causal, the ``w`` tokens after
it) and itself::

    O_i = softmax_{j : i - w <= j <= i + w'} (q_i . k_j / sqrt(d)) v_j,   w' = 0 if causal else w

computed block by block (:func:`attnzoo.kernels.windowed.sliding_window_attention`), in
``O(N w C)`` time and ``O(N w)`` memory.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int, check_rate
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.kernels.windowed import sliding_window_attention
from attnzoo.registry import Card, register

__all__ = ["SlidingWindowAttention"]


@register(
    Card(
        name="sliding_window",
        aliases=("swa", "sliding_window_attention"),
        family="token_mixer",
        summary="Multi-head softmax attention over a window of w neighbours on each side (or w past tokens).",
        paper="Longformer: The Long-Document Transformer",
        arxiv="2004.05150",
        year=2020,
        parity="equations",
        time_complexity="O(N w C + N C^2)",
        memory_complexity="O(h N w) (blocked; no N x N tensor once N exceeds the key span)",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        key_padding="edges",
        key_padding_note="a mask with holes would shrink the windows of the tokens around each hole",
        ledger=(
            "window=w counts neighbours per side, self excluded: a query sees 2w+1 keys (w+1 causal); "
            "Longformer's 'window size w' is the total width (w/2 per side) and Mistral's W counts self, "
            "so Mistral W == window=W-1 and Zoology SlidingAttn(block_size=w) == window=w, causal.",
            "Verified in float64 against dense masked attention (attention_reference with band_mask), "
            "which is the equation; no official code is reproduced.",
            "Longformer's global tokens and dilated windows are not part of this mixer. Near the sequence "
            "ends the window is truncated (fewer keys), unlike neighborhood_attention_1d which slides it "
            "inwards to keep 2w+1 keys.",
            "Zoology's SlidingAttn masks with an additive -1e4 (near-exact); attnzoo masks exactly.",
        ),
        tiny={"dim": 8, "num_heads": 2, "window": 2, "block_size": 3},
        sweep={
            "num_heads": (1, 2),
            "window": (0, 1, 2, 4),
            "causal": (False, True),
            "block_size": (None, 3, 4),
            "size": (1, 12),
        },
        bench={"dim": 256, "num_heads": 4, "window": 128, "causal": True},
    )
)
class SlidingWindowAttention(TokenMixer):
    """Sliding-window self-attention on ``x (B, N, C)`` -> ``(B, N, C)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        window: neighbours w visible on each side (past side only when causal), >= 0.
        causal: attend to the w previous tokens and self only.
        qkv_bias: bias on the fused Q/K/V projection.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
        block_size: query block of the blocked kernel (default ``max(window, 32)``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window: int = 256,
        *,
        causal: bool = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        block_size: int | None = None,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_int(window, "window", minimum=0)
        if block_size is not None:
            check_int(block_size, "block_size")
        check_bool(causal, "causal")
        check_bool(qkv_bias, "qkv_bias")
        check_rate(attn_drop, "attn_drop")
        check_rate(proj_drop, "proj_drop")
        self.dim = dim
        self.num_heads = num_heads
        self.window = window
        self.causal = causal
        self.block_size = block_size
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)
        out = sliding_window_attention(
            q,
            k,
            v,
            left=self.window,
            right=0 if self.causal else self.window,
            dropout_p=self.attn_drop if self.training else 0.0,
            block_size=self.block_size,
            key_padding_mask=key_padding_mask,
        )
        return self.proj_drop(self.proj(merge_heads(out)))
