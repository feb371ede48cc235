"""The reduced attention of Bermeitinger, Hrycej, Pavone, Kath and Handschuh, "Reducing the Transformer
Architecture to a Minimum" (2024, arXiv 2410.13732), as options of one multi-head softmax mixer.

With ``X (B, N, C)``, heads ``h`` of width ``d = C / h`` and ``s = d^-1/2``, head ``h`` computes
``softmax(s S_h) V_h`` with scores ``S_h`` and values ``V_h`` chosen by the options::

    qk="separate"  S_h = (X W_q^h + b_q^h)(X W_k^h + b_k^h)^T           (standard; 2 C^2 weights)
    qk="merged"    S_h = X W_qk^h X^T + 1 (X u_h)^T                     (W_qk^h = W_q^h W_k^h^T: C x C
                                                                         per head; h C^2 weights)
    qk="shared"    S_h = (X W^h + b^h)(X W^h + b^h)^T                   (Q = K: symmetric; C^2 weights)
    value_proj     V_h = X W_v^h + b_v^h, or (value_proj=False) V_h = X[:, :, h d : (h + 1) d]
    out_proj       out = Concat_h(...) W_O + b_O, or (out_proj=False) out = Concat_h(...)

The merged form is exact: expanding the separate scores, the terms that depend on the query only
(``x_i W_q b_k``, ``b_q b_k``) cancel in the softmax and the one left, ``x_j . W_k^h b_q^h``, is the
learned key vector ``u_h`` (kept when ``qkv_bias``). With ``value_proj=False`` and ``out_proj=False``
the layer has no value or output matrix: each head averages its own channel group of the input.
The MLP-free blocks of the paper are :mod:`attnzoo.models.minimal`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_rate
from attnzoo.families import TokenMixer
from attnzoo.kernels import attention, merge_heads, split_heads
from attnzoo.kernels.attention import sequence_padding_mask
from attnzoo.registry import Card, register

__all__ = ["QK_FORMS", "MinimalAttention"]

QK_FORMS: tuple[str, ...] = ("separate", "merged", "shared")
"""The similarity forms: separate W_q and W_k, one merged W_qk per head, shared W (symmetric)."""


@register(
    Card(
        name="minimal_attention",
        aliases=("reduced_attention",),
        family="token_mixer",
        summary="Softmax self-attention with the reductions of 'Reducing the Transformer Architecture to a "
        "Minimum': a merged query-key matrix, a symmetric (Q = K) similarity, no value/output matrices.",
        paper="Reducing the Transformer Architecture to a Minimum",
        arxiv="2410.13732",
        year=2024,
        parity="equations",
        time_complexity="O(N^2 C + N C^2); merged: O(h (N^2 C + N C^2)) (per-head scores of width C)",
        memory_complexity="O(N C) with SDPA (O(h N^2) when capturing weights); merged: O(h N C)",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        key_padding="any",
        ledger=(
            "Only the paper's abstract was available to attnzoo (no code is published); the options "
            "implement the reductions it names, and every formula beyond it is attnzoo's reading.",
            "Guess: 'query and key matrices collapsed into a single matrix of the same size' is read per "
            "head as W_qk^h = W_q^h W_k^h^T (C x C); it is the size of W_q only for one head: with h "
            "heads the merged form has h C^2 weights against 2 C^2 (fewer only for h = 1, equal at 2).",
            "With qkv_bias the merged form keeps the one bias term that does not cancel in the softmax, "
            "x_j . W_k^h b_q^h, as a learned vector u_h per head (exact; attnzoo's derivation).",
            "Guess: the 'symmetric similarity' with half the parameters is read as Q = K = X W + b (one "
            "shared projection; scores symmetric, self-similarity |x W + b|^2 >= 0); a symmetric merged "
            "matrix is not offered.",
            "Guess: with value_proj=False head h takes the h-th group of C/h input channels as its values "
            "(V = X, split like the heads); with out_proj=False the concatenated heads are the output.",
            "The score scale d^-1/2 is kept in every form (the merged matrix could absorb it), so the "
            "merged form with W_qk^h = W_q^h W_k^h^T reproduces the separate one exactly.",
            "Guess: the merged matrix is initialised N(0, d / (9 C^2)), the variance of the product of two "
            "default-initialised Linear weights, so the scores start at the separate form's scale.",
            "qkv_bias defaults to False (the paper speaks of matrices; mhsa's default is True); the output "
            "projection, when kept, has a bias as mhsa's.",
        ),
        tiny={"dim": 8, "num_heads": 2},
        sweep={
            "dim": (8, 16),
            "num_heads": (1, 2, 4),
            "qk": QK_FORMS,
            "value_proj": (True, False),
            "out_proj": (True, False),
            "qkv_bias": (True, False),
            "causal": (False, True),
            "size": (1, 12),
        },
        bench={
            "dim": 256,
            "num_heads": 4,
            "variants": {
                "standard": {},
                "merged": {"qk": "merged"},
                "merged-1head": {"qk": "merged", "num_heads": 1},
                "shared": {"qk": "shared"},
                "no-vo": {"value_proj": False, "out_proj": False},
                "minimal": {"qk": "shared", "value_proj": False, "out_proj": False},
            },
        },
    )
)
class MinimalAttention(TokenMixer):
    """Reduced softmax self-attention ``x (B, N, C) -> (B, N, C)`` (module docstring for the forms).

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        qk: ``"separate"`` (W_q, W_k), ``"merged"`` (one C x C matrix per head) or ``"shared"``
            (Q = K, a symmetric similarity).
        value_proj: project the values (``False``: each head reads its channel group of ``x``).
        out_proj: project the concatenated heads (``False``: no output matrix).
        qkv_bias: biases of the query/key and value projections (merged: the key vector ``u_h``).
        causal: mask future tokens.
        attn_drop: dropout on attention probabilities (training only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qk: str = "separate",
        value_proj: bool = True,
        out_proj: bool = True,
        qkv_bias: bool = False,
        causal: bool = False,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        if qk not in QK_FORMS:
            raise ValueError(f"qk must be one of {QK_FORMS}, got {qk!r}")
        for name, flag in (("value_proj", value_proj), ("out_proj", out_proj), ("qkv_bias", qkv_bias)):
            check_bool(flag, name)
        self.causal = check_bool(causal, "causal")
        self.attn_drop = check_rate(attn_drop, "attn_drop")
        self.dim, self.num_heads, self.qk_form = dim, num_heads, qk
        self.qk: nn.Linear | None = None
        self.qk_weight: nn.Parameter | None = None
        self.key_bias: nn.Parameter | None = None
        if qk == "merged":
            std = math.sqrt(dim // num_heads) / (3 * dim)
            self.qk_weight = nn.Parameter(torch.randn(num_heads, dim, dim) * std)
            self.key_bias = nn.Parameter(torch.zeros(num_heads, dim)) if qkv_bias else None
        else:
            self.qk = nn.Linear(dim, (2 if qk == "separate" else 1) * dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias) if value_proj else None
        self.proj = nn.Linear(dim, dim) if out_proj else None

    def _queries_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``q (B, h, N, d_s)``, ``k (B, h, N, d_s)`` and an additive score bias ``(B, h, 1, N)`` or
        ``None``; ``d_s`` is ``d``, or ``C`` in the merged form (whose keys are ``x`` itself)."""
        h = self.num_heads
        if self.qk is not None:
            heads = split_heads(self.qk(x), h if self.qk_form == "shared" else 2 * h)
            q, k = (heads, heads) if self.qk_form == "shared" else heads.chunk(2, dim=1)
            return q, k, None
        q = torch.einsum("bnc,hcd->bhnd", x, self.qk_weight)
        k = x.unsqueeze(1).expand(-1, h, -1, -1)
        bias = None
        if self.key_bias is not None:
            scale = (self.dim // h) ** -0.5
            bias = scale * torch.einsum("bnc,hc->bhn", x, self.key_bias).unsqueeze(2)
        return q, k, bias

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.num_heads
        q, k, bias = self._queries_keys(x)
        v = split_heads(self.v(x) if self.v is not None else x, h)
        drop = self.attn_drop if self.training else 0.0
        mask = sequence_padding_mask(key_padding_mask, self.causal)
        scale = (self.dim // h) ** -0.5
        out = attention(q, k, v, mask=mask, bias=bias, causal=self.causal, scale=scale, dropout_p=drop)
        out = merge_heads(out)
        return self.proj(out) if self.proj is not None else out
