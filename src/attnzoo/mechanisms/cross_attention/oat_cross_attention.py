"""Object-level cross-attention of OAT (Fang et al., "OAT: Object-Level Attention Transformer for
Gaze Scanpath Prediction", ECCV 2024, Sec. 3.3).

Decoder tokens (the fixation history) score every object token of the encoder, plus one extra
"placeholder" slot whose score is exactly 0 (the end-of-scanpath / no-object class)::

    E = Z W_e + b_e,   D = X W_d + b_d                    (object and decoder projections)
    logits[t] = [<D_t, E_1>, ..., <D_t, E_S>, 0] / sqrt(d_k)        (S + 1 classes)

``logits`` is what the official module returns (trained with a cross-entropy over the S + 1
classes). As a cross-attention, attnzoo's forward returns the read-out of that distribution,
``softmax(logits) [Z; 0]``: the expected object token (the placeholder is a zero key with a zero
value), computed by :func:`attnzoo.kernels.attention`.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_int, check_tensor
from attnzoo.families import CrossAttention
from attnzoo.kernels import attention
from attnzoo.registry import Card, register

__all__ = ["ObjectCrossAttention"]


@register(
    Card(
        name="oat_cross_attention",
        aliases=("oat_object_attention", "object_level_cross_attention"),
        family="cross_attention",
        summary="Decoder tokens score object tokens (plus a zero-score placeholder class) by a scaled "
        "dot product of two projections; the read-out is the expected object token.",
        paper="OAT: Object-Level Attention Transformer for Gaze Scanpath Prediction",
        arxiv="2407.13335",
        year=2024,
        official_repo="HKUST-NISL/oat_eccv24",
        official_commit="0c48c3e3a2f699488ed575b9013a69ec5b9e8ff9",
        parity="official",
        parity_fixtures=("oat_cross_attention",),
        time_complexity="O(N M C + (N + M) C^2)",
        memory_complexity="O((N + M) C) with SDPA (O(N M) for logits() or when capturing weights)",
        layouts=("BNC",),
        spatial_dims=1,
        ledger=(
            "The official Cross_Attention returns only the logits (T, B, S+1, 1), sequence-first; "
            "attnzoo's logits(x, context) returns them batch-first (B, T, S+1) and forward() returns "
            "the attention read-out softmax(logits) @ [context; 0] (values = the raw object tokens, a "
            "zero value for the placeholder), which the official code never forms.",
            "d_k only sets the 1/sqrt(d_k) scale and is independent of dim, as officially (released "
            "config: emb 512, d_k 512); attnzoo defaults d_k to dim.",
            "The placeholder score 0 is a zero key appended to the projected objects (officially a "
            "float32 zeros tensor concatenated to the scores); identical values.",
            "Key padding: mask (B, S) True = real object; masked objects get logit -inf and weight 0, "
            "the placeholder is never masked (the official module takes no mask).",
            "Several heads (official CA_head with a Linear(CA_head, 1) readout of the logits, in "
            "Seq2SeqTransformer) are not part of this module: stack instances and mix their logits().",
        ),
        tiny={"dim": 16, "d_k": 32},
        sweep={"dim": (8, 16), "d_k": (8, 32), "size": (1, 8)},
        bench={"dim": 512, "d_k": 512},
    )
)
class ObjectCrossAttention(CrossAttention):
    """OAT cross-attention: ``x (B, N, C)`` decoder tokens over ``context (B, M, C)`` object tokens.

    ``forward`` returns ``(B, N, C)``; :meth:`logits` returns the official ``(B, N, M + 1)`` scores.

    Args:
        dim: C (decoder and object tokens share it).
        d_k: the score scale is ``d_k ** -0.5`` (default ``dim``).
    """

    def __init__(self, dim: int, *, d_k: int | None = None) -> None:
        super().__init__()
        check_int(dim, "dim")
        d_k = dim if d_k is None else check_int(d_k, "d_k")
        self.dim = dim
        self.context_dim = dim
        self.d_k = d_k
        self.decode_fc = nn.Linear(dim, dim)
        self.encode_fc = nn.Linear(dim, dim)

    def _keys(self, context: torch.Tensor) -> torch.Tensor:
        """Projected objects with the zero placeholder key appended: ``(B, M + 1, C)``."""
        k = self.encode_fc(context)
        return torch.cat([k, k.new_zeros(k.shape[0], 1, k.shape[2])], dim=1)

    @staticmethod
    def _mask(mask: torch.Tensor | None) -> torch.Tensor | None:
        if mask is None:
            return None
        return torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)

    def logits(
        self, x: torch.Tensor, context: torch.Tensor, *, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores ``(B, N, M + 1)`` of every object and the placeholder (last); masked objects -inf."""
        check_tensor(x, "x", ndim=3, shape=(None, None, self.dim))
        check_tensor(context, "context", ndim=3, shape=(x.shape[0], None, self.dim))
        if mask is not None:
            check_tensor(mask, "mask", ndim=2, floating=False, finite=False, shape=context.shape[:2])
        scores = self.decode_fc(x) @ self._keys(context).transpose(1, 2) * self.d_k**-0.5
        full = self._mask(mask)
        return scores if full is None else scores.masked_fill(~full[:, None, :], float("-inf"))

    def compute(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        size: tuple[int, ...] | None,
    ) -> torch.Tensor:
        q = self.decode_fc(x)[:, None]
        k = self._keys(context)[:, None]
        v = torch.cat([context, context.new_zeros(context.shape[0], 1, context.shape[2])], dim=1)[:, None]
        full = self._mask(mask)
        attn_mask = None if full is None else full[:, None, None, :]
        return attention(q, k, v, mask=attn_mask, scale=self.d_k**-0.5)[:, 0]
