"""Lightning Attention (Qin et al., "Various Lengths, Constant Speed: Efficient Language Modeling with
Lightning Attention", ICML 2024; kernel of "Lightning Attention-2", arXiv 2401.04658, eq. 3-8).

Causal linear attention with a fixed per-head exponential decay ``lambda_h = exp(-s_h)`` and no
softmax, scale or normaliser::

    o_i = sum_{j <= i} exp(-s_h (i - j)) (q_i . k_j) v_j     (recurrently S_i = lambda S_{i-1} + k_i^T v_i)

computed block-wise: exact masked products inside a block (intra) plus a carried ``d x d`` state
between blocks (inter), i.e. :func:`attnzoo.kernels.linear.linear_attention` with the scalar log
gate ``-s_h``. The registered mixer is the TransNormerLLM (TNL) attention layer built on it
(``examples/module/tnl_attn.py::TnlAttention``): ``q, k, v = SiLU(x W_{q,k,v})``, Lightning
Attention with ALiBi-style slopes scaled by depth, LayerNorm, a low-rank sigmoid output gate and
an output projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int, check_tensor, tracing
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.kernels.linear import linear_attention, linear_attention_step
from attnzoo.registry import Card, register

__all__ = ["LightningAttention", "LightningAttentionOp", "alibi_slopes", "lightning_attention"]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Per-head decay rates ``(h, 1, 1)``: ``2^(-8 (i + 1) / h)`` for a power-of-two ``h``; otherwise
    the slopes of the nearest lower power of two followed by every other slope of twice that
    (the ALiBi recipe of ``lightning_attn.utils._build_slope_tensor``), in float32."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    def slopes(n: int) -> list[float]:
        if math.log2(n).is_integer():
            return power_of_two(n)
        low = 2 ** math.floor(math.log2(n))
        return power_of_two(low) + slopes(2 * low)[0::2][: n - low]

    return torch.tensor(slopes(num_heads), dtype=torch.float32).reshape(num_heads, 1, 1)


def lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``o_i = sum_{j<=i} exp(-s_h (i - j)) (q_i . k_j) v_j``; ``s = None`` means no decay.

    Args:
        q, k: ``(B, h, N, d)``; v: ``(B, h, N, e)``.
        slopes: per-head decay rates ``s_h >= 0``, any shape with ``h`` elements (e.g. ``(h, 1, 1)``).
        key_padding_mask: ``(B, N)`` bool, True = real token; padded tokens neither add to the state
            nor decay it (:func:`attnzoo.kernels.linear.linear_attention`).

    Returns ``o (B, h, N, e)`` in the dtype of ``q``.
    """
    log_gate = None
    if slopes is not None:
        check_tensor(slopes, "slopes", floating=True)
        h = q.shape[1] if q.dim() == 4 else -1
        if slopes.numel() != h:
            raise ValueError(f"slopes must hold one rate per head ({h}), got shape {tuple(slopes.shape)}")
        if not tracing() and bool((slopes < 0).any()):
            raise ValueError("slopes must be >= 0 (decay exp(-s) <= 1)")
        log_gate = -slopes.reshape(h, 1, 1)
    o, _ = linear_attention(q, k, v, log_gate=log_gate, key_padding_mask=key_padding_mask)
    return o


class LightningAttentionOp(nn.Module):
    """Parameter-free module form of :func:`lightning_attention` (the official ``linear_attn``)."""

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor | None = None
    ) -> torch.Tensor:
        return lightning_attention(q, k, v, slopes)


@register(
    Card(
        name="lightning_attention",
        aliases=("lightning", "lightning_attention2", "tnl_attention"),
        family="token_mixer",
        summary="Causal linear attention with per-head exponential decay, block-wise (TransNormerLLM layer).",
        paper="Various Lengths, Constant Speed: Efficient Language Modeling with Lightning Attention",
        arxiv="2405.17381",
        year=2024,
        official_repo="OpenNLPLab/lightning-attention",
        official_commit="d15c38529bbd5c2c82b44ddda3cac885825aa873",
        parity="official",
        parity_fixtures=("lightning_attention_reference",),
        time_complexity="O(N C (d + L) + N C^2), d = C/h, block L = 64 (linear in N)",
        memory_complexity="O(B N C + B h (N/L) d^2) activations; recurrent state h d^2 = C d numbers "
        "(Zoology-style state size, no normaliser)",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        causal_only=True,
        key_padding="any",
        ledger=(
            "Kernel verified against the official torch reference linear_attn (fixture "
            "lightning_attention_reference: decayed, 6-head non-power-of-2 slopes, no decay; N = 75/64/50).",
            "The official reference is O(N^2) (it materialises the N x N decay mask with a Python loop) and "
            "the fast path is Triton (GPU only); attnzoo runs the exact block-wise form on any device.",
            "Official precision: the decay mask is float32 and q k^T is cast to float32 and back; attnzoo "
            "computes in float64 for float64 inputs (differences <= 1e-5 on the fixtures) and in float32 "
            "for float32/bf16 inputs.",
            "Official Triton kernels reject head dims d, e in {1, 2, 4, 8, 16} (is_support returns 16 % d), "
            "pad e to a power of two and split d > 128; attnzoo has no such limits.",
            "Mixer = examples/module/tnl_attn.py::TnlAttention: its `norm_type` and `causal` arguments are "
            "ignored there (always LayerNorm, always causal); attnzoo exposes no norm_type and raises on "
            "causal=False. The TNL paper's SRMSNorm and the rest of the TNL block are not in this mixer.",
            "num_layers must be >= 2: the official slope scale 1 - layer_idx / (num_layers - 1) divides by "
            "zero for a single layer.",
            "No parameters to convert: the mixer's Linear/LayerNorm keys equal TnlAttention's; the slope "
            "buffer is non-persistent in both.",
        ),
        tiny={"dim": 8, "num_heads": 2},
        sweep={
            "dim": (8, 16),
            "num_heads": (1, 2),
            "layer_idx": (0, 3),
            "num_layers": (4, 12),
            "size": (1, 12),
        },
        bench={"dim": 512, "num_heads": 8, "causal": True},
        conformance={
            "skip": {
                "export_dynamic_size": "the chunked linear-attention kernel (attnzoo.kernels.linear) "
                "loops in Python over the N / chunk chunks, so a traced program is fixed to one "
                "sequence length"
            }
        },
    )
)
class LightningAttention(TokenMixer):
    """TransNormerLLM attention with Lightning Attention on ``x (B, N, C)`` -> ``(B, N, C)``.

    Heads: ``q, k, v: (B, h, N, d)`` with ``d = C / h``; slopes ``(h, 1, 1)``.

    Args:
        dim: channels C (``embed_dim``).
        num_heads: heads h; must divide ``dim``.
        bias: bias on every Linear.
        layer_idx, num_layers: depth scaling of the slopes, ``s * (1 - layer_idx / (num_layers - 1) + 1e-5)``.
        causal: must be True (Lightning Attention is causal).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        bias: bool = False,
        layer_idx: int = 0,
        num_layers: int = 12,
        causal: bool = True,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_bool(bias, "bias")
        if not check_bool(causal, "causal"):
            raise ValueError("causal must be True: Lightning Attention is a causal mixer")
        check_int(num_layers, "num_layers", minimum=2)
        if check_int(layer_idx, "layer_idx", minimum=0) >= num_layers:
            raise ValueError(f"layer_idx must be an int in [0, num_layers), got {layer_idx!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = True
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.o_proj = nn.Linear(dim, dim, bias=bias)
        self.norm = nn.LayerNorm(dim)
        self.output_gate = nn.Sequential(
            nn.Linear(dim, self.head_dim, bias=bias), nn.Linear(self.head_dim, dim, bias=bias)
        )
        rate = alibi_slopes(num_heads) * (1 - layer_idx / (num_layers - 1) + 1e-5)
        self.register_buffer("slope_rate", rate, persistent=False)

    def state_size(self) -> int:
        """Recurrent state numbers per sequence: ``h d^2``."""
        return self.num_heads * self.head_dim**2

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return tuple(split_heads(F.silu(p(x)), self.num_heads) for p in projections)

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.norm(o) * torch.sigmoid(self.output_gate(x)))

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = self._qkv(x)
        o = lightning_attention(q, k, v, self.slope_rate.to(q.dtype), key_padding_mask)
        return self._output(x, merge_heads(o))

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one token: ``x_t (B, C)``, ``state (B, h, d, d)`` or ``None`` -> ``(y_t (B, C), state)``."""
        check_tensor(x_t, "x_t", ndim=2, shape=(None, self.dim))
        q, k, v = (t.squeeze(2) for t in self._qkv(x_t[:, None, :]))
        log_gate = -self.slope_rate.reshape(1, self.num_heads, 1).to(q.dtype)
        o, state = linear_attention_step(q, k, v, state, log_gate)
        return self._output(x_t, o.reshape(x_t.shape[0], self.dim)), state
