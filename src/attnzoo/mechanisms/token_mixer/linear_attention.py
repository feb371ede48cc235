"""Linear attention with the elu+1 feature map (Katharopoulos et al., "Transformers are RNNs:
Fast Autoregressive Transformers with Linear Attention", ICML 2020, eq. 4-9).

With ``phi(x) = elu(x) + 1`` (eq. 7), per head::

    bidirectional (eq. 6):  o_i = phi(q_i)^T sum_j phi(k_j) v_j^T / (phi(q_i)^T sum_j phi(k_j) + eps)
    causal (eq. 8-9):       S_i = S_{i-1} + phi(k_i) v_i^T,  z_i = z_{i-1} + phi(k_i),
                            o_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps)

in O(N d^2) time per head. Both run through :mod:`attnzoo.kernels.linear` with ``v`` augmented by
a ones column, so that the normaliser ``z`` is the last column of the state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_float, check_rate, check_tensor
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.kernels.linear import linear_attention, linear_attention_bidirectional, linear_attention_step
from attnzoo.registry import Card, register

__all__ = ["LinearAttention", "elu_feature_map"]


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``phi(x) = elu(x) + 1`` (positive, so that the normaliser never vanishes)."""
    return F.elu(x) + 1.0


@register(
    Card(
        name="linear_attention",
        aliases=("linear_transformer", "elu_linear_attention"),
        family="token_mixer",
        summary="Kernelised attention, phi = elu + 1, O(N d^2); the causal form is an RNN (d x d state).",
        paper="Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
        arxiv="2006.16236",
        year=2020,
        official_repo="idiap/fast-transformers",
        parity="equations",
        time_complexity="O(N C d + N C^2), d = C/h (causal chunked form: O(N C (d + L)), chunk L = 64)",
        memory_complexity="O(B N C) activations; recurrent state h d (d + 1) numbers "
        "(Zoology-style state size: KV state h*d*d plus normaliser h*d)",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        key_padding="any",
        ledger=(
            "Verified in float64 against the token-by-token recurrence (eq. 8-9) and the explicit "
            "normalised sum (eq. 6); no official fixture.",
            "eps=1e-6 is added to the normaliser as in fast-transformers' LinearAttention / "
            "CausalLinearAttention (the paper's equations have no eps).",
            "Causal form uses the chunked kernel (exact; autograd backward) instead of the paper's "
            "custom CUDA/C++ causal_product gradient (eq. 13-15).",
            "Projections: one fused qkv Linear with bias + output Linear, like fast-transformers' "
            "AttentionLayer (which uses separate q/k/v Linears; split the fused weight to convert).",
        ),
        tiny={"dim": 8, "num_heads": 2},
        sweep={
            "dim": (8, 16),
            "num_heads": (1, 2, 4),
            "causal": (False, True),
            "qkv_bias": (True, False),
            "size": (1, 12),
        },
        bench={"dim": 512, "num_heads": 8, "causal": True},
    )
)
class LinearAttention(TokenMixer):
    """Linear attention on ``x (B, N, C)`` -> ``(B, N, C)``; heads ``q, k, v: (B, h, N, C/h)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        causal: the causal (RNN) form; then :meth:`step` decodes one token at a time.
        qkv_bias: bias on the fused Q/K/V projection.
        eps: added to the normaliser.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        causal: bool = False,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_float(eps, "eps", minimum=0.0)
        check_bool(causal, "causal")
        check_bool(qkv_bias, "qkv_bias")
        check_rate(proj_drop, "proj_drop")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.eps = float(eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def state_size(self) -> int:
        """Recurrent state numbers per sequence: ``h d (d + 1)`` (KV state and normaliser)."""
        return self.num_heads * self.head_dim * (self.head_dim + 1)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)
        ones = v.new_ones(*v.shape[:-1], 1)
        return elu_feature_map(q), elu_feature_map(k), torch.cat([v, ones], dim=-1)

    def _normalise(self, o: torch.Tensor) -> torch.Tensor:
        return o[..., : self.head_dim] / (o[..., self.head_dim :] + self.eps)

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v1 = self._features(x)
        if self.causal:
            o, _ = linear_attention(q, k, v1, key_padding_mask=key_padding_mask)
        else:
            o = linear_attention_bidirectional(q, k, v1, key_padding_mask=key_padding_mask)
        return self.proj_drop(self.proj(merge_heads(self._normalise(o))))

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one token (causal modules only).

        Args:
            x_t: ``(B, C)``, the next token.
            state: ``(B, h, d, d + 1)`` from the previous step (``None`` before the first token);
                the last column is the normaliser ``z``.

        Returns ``(y_t (B, C), new_state)``; feeding tokens one by one reproduces :meth:`forward`.
        """
        if not self.causal:
            raise ValueError("step() decodes causal linear attention; this module has causal=False")
        check_tensor(x_t, "x_t", ndim=2, shape=(None, self.dim))
        q, k, v1 = (t.squeeze(2) for t in self._features(x_t[:, None, :]))
        o, state = linear_attention_step(q, k, v1, state)
        y = self.proj(self._normalise(o).reshape(x_t.shape[0], self.dim))
        return self.proj_drop(y), state
