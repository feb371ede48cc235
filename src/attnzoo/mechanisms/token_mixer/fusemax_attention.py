"""Softmax self-attention computed by FuseMax's 1-pass cascade of extended Einsums (Nayak et al.,
"FuseMax: Leveraging Extended Einsums to Optimize Attention Accelerator Design", MICRO 2024,
arXiv 2406.10491).

The layer is multi-head softmax attention (``mhsa``'s projections and function); only the order of
the computation differs: the attention core walks the keys tile by tile carrying the running max,
denominator and numerator of :func:`attnzoo.kernels.fusemax.fusemax_attention` (``passes=1``), or
runs the 2- or 3-pass cascade of the same module (``passes=2``/``3``), so that the benchmark can set
the cascades' measured cost beside their cost model (:func:`attnzoo.kernels.fusemax.cascade_cost`).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.kernels.attention import sequence_padding_mask
from attnzoo.kernels.fusemax import PASSES, cascade_attention, check_passes
from attnzoo.registry import Card, register

__all__ = ["FuseMaxAttention"]


@register(
    Card(
        name="fusemax_attention",
        aliases=("fusemax",),
        family="token_mixer",
        summary="Multi-head softmax self-attention whose core is FuseMax's 1-pass cascade of Einsums "
        "(running max, denominator and numerator over key tiles), or the 2-/3-pass cascade.",
        paper="FuseMax: Leveraging Extended Einsums to Optimize Attention Accelerator Design",
        arxiv="2406.10491",
        year=2024,
        parity="equations",
        time_complexity="O(passes N^2 C + N C^2) (QK recomputed in every pass)",
        memory_complexity="O(B h N (d + tile)) working set per tile (autograd keeps every tile's "
        "O(h N tile) exponentials)",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        key_padding="any",
        ledger=(
            "FuseMax is an accelerator (a mapping of the cascade onto a spatial array), evaluated with "
            "Timeloop/Accelergy in the authors' artifact (FPSG-UIUC/micro24-fusemax-artifact); attnzoo "
            "implements the cascade it maps, in PyTorch on the CPU, not the architecture.",
            "The 1-pass cascade is written as the authors' FPSG-UIUC/accelerator-zoo notebook "
            "(workspace/notebooks/fusemax.ipynb) spells it (QK, LM, RM, SLN, PRM, SPD, SLD, RD, SPNV, "
            "SLNV, RNV, AV); the 2- and 3-pass cascades (passes=2/3) are attnzoo's, in its notation.",
            "Verified in float64 against attnzoo.kernels.attention (softmax attention), causal and not, "
            "with boolean masks (kernel argument mask), for every tile size 1..N_k+1, values and gradients "
            "(tests/kernels/test_fusemax.py).",
            "The paper's cascade has no score scale; attnzoo scales Q by d^-0.5 first (as mhsa).",
            "The cascade loops over all queries at once (the paper's P2/P1/P0 query tiling is part of "
            "the spatial mapping and does not change the result); every key tile is computed, also "
            "tiles that causal masking empties for some queries.",
            "Projections are mhsa's (fused Q/K/V with optional bias, output projection with bias); no "
            "attention dropout.",
            "Cost model (cascade_cost, printed by attnzoo bench): source, the arXiv 2406.10491 abstract "
            "(cascades give 'lower bounds on the number of passes a kernel must take through its input "
            "data, which has implications for either required on-chip buffer capacity or memory traffic';"
            " FuseMax's buffer is 'independent of sequence length'). The counts 3/2/1 are read off the "
            "cascades (a pass ends at each reduction over all of M that a later Einsum needs: GM then SD;"
            " RM/RD; none). The paper's body was not readable here, so the traffic and buffer formulas "
            "are attnzoo's (recompute QK in every pass, or buffer the P0 x M score fiber to read K once),"
            " checked by hand on small cases, against the FLOP counter and against the kernels' own tile "
            "walks (tests/kernels/test_fusemax.py).",
        ),
        tiny={"dim": 8, "num_heads": 2, "tile": 4},
        sweep={
            "dim": (8, 16),
            "num_heads": (1, 2, 4),
            "tile": (1, 3, 4, 16),
            "passes": PASSES,
            "causal": (False, True),
            "qkv_bias": (True, False),
            "size": (1, 13),
        },
        bench={
            "dim": 256,
            "num_heads": 4,
            "tile": 64,
            "variants": {"1-pass": {"passes": 1}, "2-pass": {"passes": 2}, "3-pass": {"passes": 3}},
            "cost_model": "attnzoo.kernels.fusemax:bench_cost_model",
        },
        conformance={
            "skip": {
                "export_dynamic_size": "the cascade loops in Python over the ceil(N / tile) key tiles, so "
                "a traced program is fixed to one sequence length"
            }
        },
    )
)
class FuseMaxAttention(TokenMixer):
    """Softmax self-attention ``x (B, N, C) -> (B, N, C)`` through a cascade of Einsums.

    Heads: ``q, k, v: (B, h, N, C / h)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        tile: keys per tile ``M0`` of the cascade (any positive int).
        passes: 1 (FuseMax's cascade), 2 or 3 (the multi-pass cascades); all compute the same function.
        qkv_bias: bias on the fused Q/K/V projection.
        causal: mask future tokens.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        tile: int = 64,
        passes: int = 1,
        qkv_bias: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        self.tile = check_int(tile, "tile")
        self.passes = check_passes(passes)
        self.causal = check_bool(causal, "causal")
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=check_bool(qkv_bias, "qkv_bias"))
        self.proj = nn.Linear(dim, dim)

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)
        mask = sequence_padding_mask(key_padding_mask, self.causal)
        out = cascade_attention(q, k, v, passes=self.passes, tile=self.tile, mask=mask, causal=self.causal)
        return self.proj(merge_heads(out))
