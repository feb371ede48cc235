"""Shifted sparse attention, S2-Attn (Chen et al., "LongLoRA", ICLR 2024, sec. 3.2 and Fig. 2), with the
sink tokens and non-cyclic reassembly of SinkLoRA's SF-Attn (Zhang, "SinkLoRA", 2024, sec. 3).

The sequence is split into groups of ``G`` tokens and attention runs inside each group. The first
half of the heads uses groups ``[0, G), [G, 2G), ...``; the second half is shifted by ``G/2``
(groups ``[0, G/2), [G/2, 3G/2), ...``) so that information flows between neighbouring groups.
Every query also attends to the first ``num_sink`` tokens (the "sink attention tokens")::

    O_i^(head) = softmax_{j in group_head(i) or j < num_sink, j <= i} (q_i . k_j / sqrt(d)) v_j

computed group by group (:func:`attnzoo.kernels.windowed.grouped_attention`) in ``O(N (G + S) C)``.
``cyclic=True`` reproduces LongLoRA exactly instead: the shifted heads roll the sequence by
``-G/2`` so the last group wraps around to the first ``G/2`` tokens, with the causal mask applied
in the rolled order (no sinks).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int, check_rate
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.kernels.windowed import grouped_attention
from attnzoo.registry import Card, register

__all__ = ["ShiftedSparseAttention"]


@register(
    Card(
        name="s2_attention",
        aliases=("s2_attn", "shifted_sparse_attention", "sf_attn", "longlora_attention"),
        family="token_mixer",
        summary="Group-local causal attention, half the heads shifted by G/2, plus global sink tokens.",
        paper="LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models",
        arxiv="2309.12307",
        year=2024,
        official_repo="dvlab-research/LongLoRA",
        parity="equations",
        time_complexity="O(N (G + S) C + N C^2)",
        memory_complexity="O(h N (G + S))",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        key_padding="right",
        key_padding_note="groups and sink tokens sit at absolute positions, which left padding would "
        "shift; cyclic=True refuses masks (its wrapped last group depends on N)",
        ledger=(
            "Default (cyclic=False) follows SinkLoRA's SF-Attn (arXiv 2406.05678): attnzoo reads its "
            "'segmentation and reassembly' as a non-cyclic shift, so the shifted heads have partial first "
            "and last groups of G/2 tokens instead of LongLoRA's wrapped group; SinkLoRA's released code "
            "still contains LongLoRA's roll, so this is verified against the paper's description only.",
            "cyclic=True is LongLoRA's S2-Attn as released (roll of the second half of the heads by -G/2, "
            "in-group causal mask, roll back; for odd G the official roll is -ceil(G/2) forward but G//2 "
            "back, attnzoo uses G//2 both ways): its wrapped last group lets the first G/2 tokens attend to "
            "the last G/2 ones, so it is NOT causal; it needs N % G == 0 and num_sink=0.",
            "num_sink leading tokens are keys of every query (causally); a sink inside the query's own "
            "group is counted once. Default 4 is StreamingLLM's sink count; SinkLoRA's released code has "
            "no sink logic, so its exact count is not confirmed from code.",
            "group_size is a fixed G in tokens; LongLoRA sets G = N/4 per batch (group_size_ratio=1/4) "
            "and requires N % G == 0; attnzoo accepts any N (the last group is partial).",
            "Which heads shift: LongLoRA shifts heads h/2..h-1; so does attnzoo. Non-causal use "
            "(causal=False) is an attnzoo option; both papers use S2-Attn in causal LLMs.",
            "The papers use S2-Attn only for fine-tuning and full attention at inference; this mixer always "
            "computes the sparse pattern.",
        ),
        tiny={"dim": 8, "num_heads": 2, "group_size": 4, "num_sink": 1},
        sweep={
            "num_heads": (2, 4),
            "group_size": (2, 4),
            "num_sink": (0, 1),
            "causal": (True, False),
            "size": (1, 12),
        },
        bench={"dim": 256, "num_heads": 4, "group_size": 256, "num_sink": 4},
    )
)
class ShiftedSparseAttention(TokenMixer):
    """S2-attention on ``x (B, N, C)`` -> ``(B, N, C)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim`` and be even (half of them are shifted).
        group_size: tokens per group G (>= 2 so that the shift G // 2 is positive).
        num_sink: leading tokens every query attends to (SinkLoRA); 0 for plain LongLoRA.
        causal: causal masking (the papers' setting).
        cyclic: LongLoRA's cyclic roll for the shifted heads (not causal; see the card ledger).
        qkv_bias: bias on the fused Q/K/V projection.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        group_size: int = 2048,
        *,
        num_sink: int = 4,
        causal: bool = True,
        cyclic: bool = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        if num_heads % 2:
            raise ValueError(f"num_heads must be even (half of the heads are shifted), got {num_heads}")
        check_int(group_size, "group_size", minimum=2)
        check_int(num_sink, "num_sink", minimum=0)
        for name, flag in (("causal", causal), ("cyclic", cyclic), ("qkv_bias", qkv_bias)):
            check_bool(flag, name)
        check_rate(attn_drop, "attn_drop")
        check_rate(proj_drop, "proj_drop")
        if cyclic and num_sink:
            raise ValueError("cyclic=True is LongLoRA's S2-Attn, which has no sink tokens: set num_sink=0")
        self.dim = dim
        self.num_heads = num_heads
        self.group_size = group_size
        self.num_sink = num_sink
        self.causal = causal
        self.cyclic = cyclic
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        n = x.shape[1]
        g, shift = self.group_size, self.group_size // 2
        if self.cyclic and key_padding_mask is not None:
            raise ValueError(
                "key_padding_mask cannot be honoured with cyclic=True: the wrapped last group joins the "
                "first and last G/2 positions of the padded length, not of each sequence"
            )
        if self.cyclic and n % g:
            raise ValueError(f"cyclic=True needs N divisible by group_size={g}, got N={n}")
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)
        half = self.num_heads // 2
        kw = {
            "group_size": g,
            "num_sink": self.num_sink,
            "causal": self.causal,
            "dropout_p": self.attn_drop if self.training else 0.0,
            "key_padding_mask": key_padding_mask,
        }
        plain = grouped_attention(q[:, :half], k[:, :half], v[:, :half], **kw)
        if self.cyclic:
            rolled = [t[:, half:].roll(-shift, dims=2) for t in (q, k, v)]
            shifted = grouped_attention(*rolled, **kw).roll(shift, dims=2)
        else:
            shifted = grouped_attention(q[:, half:], k[:, half:], v[:, half:], offset=shift, **kw)
        out = torch.cat([plain, shifted], dim=1)
        return self.proj_drop(self.proj(merge_heads(out)))
