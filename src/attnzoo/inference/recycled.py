"""Recycled Attention: decoding that alternates full attention with attention over recycled top-K keys.

Xu, Goyal, Choi, "Recycled Attention: Efficient inference for long-context language models",
arXiv:2411.05787 (2024).

Per attention layer, at decode step ``s`` (0 = the first generated token) with a KV cache of
``N`` keys:

* if ``s % stride == 0`` (a full step): ``o = softmax(scale q K^T + b) V`` over all ``N`` keys, and
  the ``K`` keys with the largest attention, summed over the query heads that share a key/value
  head, are recorded per key/value head: ``R = topK_j sum_{h in group} P[h, j]``; ``N_full = N``;
* otherwise: ``o = softmax(scale q K_I^T + b_I) V_I`` over ``I = R ∪ {N_full, ..., N - 1}``, the
  recycled keys plus every key added since the last full step.

With ``stride = 1`` every step is a full step, so the result is full attention exactly. Prefill
(more than one query) is full causal attention and restarts the step count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from attnzoo.checks import check_tensor
from attnzoo.inference.hf_edit import AttentionFn, hf_attention_layers, replace_attention
from attnzoo.kernels.attention import attention, attention_reference

__all__ = ["LEDGER", "RecycledAttention", "recycled_attention_model", "top_k_keys"]

LEDGER = (
    "Verified by equations and properties (no official-code fixture): stride 1 equals full attention "
    "exactly; partial steps equal full attention masked to the recycled + new keys.",
    "Top-K is chosen per key/value head from the attention summed over its query heads (GQA-aware); "
    "the first decode step after a prefill is always a full step.",
    "transformers integration replaces the attention function (attnzoo_edit implementation) instead "
    "of a custom cache class; the full cache stays in memory, only the attended keys are reduced.",
)


def _expand(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def top_k_keys(probs: torch.Tensor, num_kv_heads: int, k: int) -> torch.Tensor:
    """``(B, h_kv, min(k, N_k))`` key indices (ascending) with the largest attention in ``probs
    (B, h, N_q, N_k)``, summed over the queries and over the query heads of each key/value head."""
    probs = check_tensor(probs, "probs", ndim=4)
    b, h, _, n_k = probs.shape
    if h % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} must divide the {h} query heads")
    score = probs.sum(dim=-2).view(b, num_kv_heads, h // num_kv_heads, n_k).sum(dim=2)
    return score.topk(min(k, n_k), dim=-1).indices.sort(dim=-1).values


class RecycledAttention(nn.Module):
    """Recycled Attention for one attention layer during decoding (no parameters; holds the
    recycled key set of the last full step, so use one instance per layer and sequence batch).

    ``forward(q (B, h, N_q, d), key (B, h_kv, N, d), value (B, h_kv, N, d_v), bias=None, scale=None)``
    returns ``(out (B, h, N_q, d_v), probs (B, h, N_q, N) at full steps else None)``; ``key``/``value``
    are the whole cache including the new token, ``bias`` an additive float mask broadcastable to
    ``(B, 1, N_q, N)``.

    Args:
        stride: decode steps per full-attention step (1 = always full attention).
        top_k: number of keys recycled per key/value head.
    """

    def __init__(self, stride: int, top_k: int) -> None:
        super().__init__()
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.stride, self.top_k = int(stride), int(top_k)
        self.step = 0
        self.full_len = 0
        self.recycled: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the recycled keys (a new sequence or a new prefill)."""
        self.step, self.full_len, self.recycled = 0, 0, None

    def forward(
        self,
        q: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q = check_tensor(q, "q", ndim=4)
        key = check_tensor(key, "key", ndim=4)
        value = check_tensor(value, "value", ndim=4)
        heads, kv_heads, n = q.shape[1], key.shape[1], key.shape[-2]
        if heads % kv_heads or value.shape[1] != kv_heads or value.shape[-2] != n:
            raise ValueError(
                f"key {tuple(key.shape)} / value {tuple(value.shape)} do not fit q {tuple(q.shape)}"
            )
        if q.shape[-2] > 1:
            self.reset()
            causal = bias is None
            out, probs = attention_reference(
                q,
                _expand(key, heads),
                _expand(value, heads),
                bias=bias,
                causal=causal,
                scale=scale,
                return_weights=True,
            )
            return out, probs
        full = self.step % self.stride == 0 or self.recycled is None
        self.step += 1
        if full:
            out, probs = attention_reference(
                q, _expand(key, heads), _expand(value, heads), bias=bias, scale=scale, return_weights=True
            )
            self.recycled = top_k_keys(probs, kv_heads, self.top_k)
            self.full_len = n
            return out, probs
        if n < self.full_len:
            raise ValueError(
                f"the cache shrank from {self.full_len} to {n} keys; call reset() for a new sequence"
            )
        b = q.shape[0]
        new = torch.arange(self.full_len, n, device=key.device).expand(b, kv_heads, -1)
        idx = torch.cat([self.recycled, new], dim=-1)
        gather = idx.unsqueeze(-1)
        k_sel = key.gather(2, gather.expand(-1, -1, -1, key.shape[-1]))
        v_sel = value.gather(2, gather.expand(-1, -1, -1, value.shape[-1]))
        bias_sel = None
        if bias is not None:
            bias_sel = bias.expand(b, heads, 1, n).gather(-1, _expand(idx, heads).unsqueeze(-2))
        out = attention(q, _expand(k_sel, heads), _expand(v_sel, heads), bias=bias_sel, scale=scale)
        return out, None

    def extra_repr(self) -> str:
        return f"stride={self.stride}, top_k={self.top_k}"


@contextmanager
def recycled_attention_model(
    model: nn.Module, stride: int, top_k: int
) -> Iterator[dict[int, RecycledAttention]]:
    """Run a ``transformers`` decoder with Recycled Attention in every layer while active.

    Prefill passes compute full causal attention; every later one-token step (``generate`` or
    manual cached decoding) follows the stride. Yields ``{layer: RecycledAttention}``.
    """
    layers = hf_attention_layers(model)
    states = {i: RecycledAttention(stride, top_k) for i in layers}

    def make(state: RecycledAttention) -> AttentionFn:
        def fn(
            module: nn.Module,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            attention_mask: torch.Tensor | None,
            scaling: float | None,
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            bias = None
            if attention_mask is not None:
                bias = attention_mask[..., : key.shape[-2]]
                if bias.dtype == torch.bool:
                    bias = torch.zeros((), dtype=query.dtype, device=query.device).masked_fill(
                        ~bias, float("-inf")
                    )
            return state(query, key, value, bias=bias, scale=scaling)

        return fn

    funcs: dict[nn.Module, Any] = {layers[i]: make(s) for i, s in states.items()}
    with replace_attention(model, funcs):
        yield states
