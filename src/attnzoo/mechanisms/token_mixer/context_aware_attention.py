"""Context-aware self-attention, the intra-modal layer of Ilias & Askounis, "Context-aware attention
layers coupled with optimal transport domain adaptation and multimodal fusion methods for recognizing
dementia from spontaneous speech" (2023, arXiv 2305.16406), which takes it from Yang et al.,
"Context-Aware Self-Attention Networks" (AAAI 2019, arXiv 1902.05766, eq. 4-7, global context).

Queries and keys are pulled towards a context vector ``c`` by a learned per-token gate::

    Q, K, V = X W_Q + b_Q, X W_K + b_K, X W_V + b_V
    c       = mean_n X_n                                   (global context, or a given context)
    Q_c, K_c = c U_Q, c U_K                                 (no bias)
    l_Q     = sigmoid([Q; Q_c] w_Q + b),  l_K = sigmoid([K; K_c] w_K + b)      (B, N, 1)
    Q^      = (1 - l_Q) Q + l_Q Q_c,      K^  = (1 - l_K) K + l_K K_c
    out     = Concat_h softmax(Q^_h K^_h^T / sqrt(d_h)) V_h W_O + b_O

as in the authors' THUMT code (``layers/attention_new.py``): one gate per token over all heads, the
context projected without bias, heads split after the gating.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_divisible, check_int, check_rate, check_tensor
from attnzoo.families import TokenMixer
from attnzoo.kernels import attention, merge_heads, split_heads
from attnzoo.kernels.attention import padding_mask
from attnzoo.registry import Card, register

__all__ = ["ContextAwareSelfAttention"]


@register(
    Card(
        name="context_aware_self_attention",
        aliases=("context_aware_attention", "csan"),
        family="token_mixer",
        summary="Softmax self-attention whose queries and keys are gated towards a projected global "
        "context vector (the mean token), one sigmoid gate per token.",
        paper="Context-aware attention layers coupled with optimal transport domain adaptation and "
        "multimodal fusion methods for recognizing dementia from spontaneous speech",
        arxiv="2305.16406",
        year=2023,
        official_repo="baosongyang/Context-Aware-SAN",
        official_commit="23d4e30b0fbb65041d9049b68d7372bc1242bf62",
        parity="equations",
        time_complexity="O(N^2 C + N C^2)",
        memory_complexity="O(N C) with SDPA (O(h N^2) when capturing weights)",
        layouts=("BNC",),
        spatial_dims=1,
        key_padding="any",
        ledger=(
            "Only the abstract of Ilias & Askounis (2023) was available to attnzoo and they publish no "
            "code; the layer follows Yang et al. (2019), the context-aware self-attention the abstract "
            "names, and its authors' TensorFlow code (baosongyang/Context-Aware-SAN, THUMT, "
            "layers/attention_new.py with models/transformer_new.py), ported to torch.",
            "Global context c = mean of the layer's input tokens (THUMT: the masked mean of the "
            "pre-processed layer input); attend(x, context=c) takes another one, e.g. the deep-global "
            "context (means of the inputs of all previous layers, concatenated) of width context_dim.",
            "One gate per token over the whole projection (THUMT linear on the unsplit q and k, scope "
            "gate_q/gate_k, with bias); the paper's eq. 6 could also be read per head.",
            "Guess: the dementia paper's head count and width are unknown; attnzoo defaults to 8 heads "
            "(THUMT's transformer default) and applies it to BERT/DeiT token features of any width.",
            "Not causal: the global context reads every token (a decoder would need a prefix mean).",
        ),
        tiny={"dim": 16, "num_heads": 2},
        bench={"dim": 256, "num_heads": 8},
        sweep={"num_heads": (1, 2, 4), "size": (1, 12)},
    )
)
class ContextAwareSelfAttention(TokenMixer):
    """Context-aware self-attention on ``x (B, N, C)`` -> ``(B, N, C)``.

    Args:
        dim: C.
        num_heads: heads h; must divide ``dim``.
        context_dim: width of the context vector (default ``dim``, the global mean token);
            :meth:`attend` takes a ``context (B, context_dim)`` in place of the mean.
        attn_drop: dropout on the attention probabilities (training only).
    """

    def __init__(
        self, dim: int, num_heads: int = 8, *, context_dim: int | None = None, attn_drop: float = 0.0
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        self.context_dim = dim if context_dim is None else check_int(context_dim, "context_dim")
        self.attn_drop = check_rate(attn_drop, "attn_drop")
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.context_proj = nn.Linear(self.context_dim, 2 * dim, bias=False)
        self.gate_q = nn.Linear(2 * dim, 1)
        self.gate_k = nn.Linear(2 * dim, 1)
        self.proj = nn.Linear(dim, dim)

    def gates(
        self, x: torch.Tensor, context: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gated ``Q^, K^`` and ``V (B, N, C)`` and the gates ``l_Q, l_K (B, N, 1)``; the default
        context is the mean of the tokens ``keep (B, N)`` marks real (all when ``None``)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if context is not None:
            c = context
        elif keep is None:
            c = x.mean(dim=1)
        else:  # padded tokens of x are zero: sum and divide by the kept count
            c = x.sum(dim=1) / keep.sum(dim=1, keepdim=True).to(x.dtype)
        qc, kc = self.context_proj(c)[:, None].chunk(2, dim=-1)  # (B, 1, C) each
        d = self.dim
        # [t; t_c] w + b without forming the (B, N, 2C) concatenation
        lq = torch.sigmoid(
            F.linear(q, self.gate_q.weight[:, :d]) + F.linear(qc, self.gate_q.weight[:, d:], self.gate_q.bias)
        )
        lk = torch.sigmoid(
            F.linear(k, self.gate_k.weight[:, :d]) + F.linear(kc, self.gate_k.weight[:, d:], self.gate_k.bias)
        )
        return (1 - lq) * q + lq * qc, (1 - lk) * k + lk * kc, v, lq, lk

    def _mix(
        self, x: torch.Tensor, context: torch.Tensor | None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v, _, _ = self.gates(x, context, keep)
        h = self.num_heads
        drop = self.attn_drop if self.training else 0.0
        mask = None if keep is None else padding_mask(keep)
        out = attention(split_heads(q, h), split_heads(k, h), split_heads(v, h), mask=mask, dropout_p=drop)
        return self.proj(merge_heads(out))

    def attend(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The layer on ``x (B, N, C)`` with the context vector ``context (B, context_dim)`` (default: the
        mean token, which needs ``context_dim == dim``) -> ``(B, N, C)``; ``forward`` uses the mean."""
        check_tensor(x, "x", ndim=3, shape=(None, None, self.dim))
        if context is not None:
            check_tensor(context, "context", ndim=2, shape=(x.shape[0], self.context_dim))
        elif self.context_dim != self.dim:
            raise ValueError(
                f"context (B, {self.context_dim}) is required: the module was built with "
                f"context_dim={self.context_dim}, not the token width dim={self.dim}"
            )
        return self._mix(x, context)

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.context_dim != self.dim:
            raise ValueError(
                f"this module was built with context_dim={self.context_dim} != dim={self.dim}: call "
                "attend(x, context) with its context vector"
            )
        return self._mix(x, None, key_padding_mask)
