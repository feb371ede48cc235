"""Multi-head softmax attention: the one implementation every softmax mechanism calls.

Computes, per batch and head,

    O = softmax(scale * Q K^T + bias + log(mask)) V

with ``Q: (B, h, N_q, d)``, ``K: (B, h, N_k, d)``, ``V: (B, h, N_k, d_v)``, a boolean ``mask``
(True = may attend) and an additive float ``bias``, both broadcastable to ``(B, h, N_q, N_k)``.
:func:`attention` runs :func:`torch.nn.functional.scaled_dot_product_attention`;
:func:`attention_reference` is the naive materialised form used as the test oracle and, while
:func:`attnzoo.capture` is active, as the path that reports the attention matrix.
Every query row must keep at least one key: a fully masked row is undefined (NaN).
:func:`allowed_keys` gives the bool mask of the keys these arguments let each query attend to,
which :func:`attention_reference` reports with the attention matrix while capturing;
:func:`padding_mask` turns a key-padding mask ``(B, N)`` into a ``mask`` that keeps no row empty.
While an :func:`attnzoo.training.hook.score_perturbation` is active (adversarial training of
attention), :func:`attention` also takes the materialised path, whose masked scores pass
through the perturbation before the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.capture import capturing, record, wants
from attnzoo.training.hook import perturb, perturbing

__all__ = [
    "allowed_keys",
    "attention",
    "attention_reference",
    "causal_mask",
    "merge_heads",
    "padding_mask",
    "sequence_padding_mask",
    "split_heads",
]


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, N, h*d) -> (B, h, N, d)``."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, h, N, d) -> (B, N, h*d)``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def causal_mask(n_q: int, n_k: int, device: torch.device | None = None) -> torch.Tensor:
    """``(N_q, N_k)`` bool mask, True where key j <= query i (queries aligned to the last keys)."""
    offset = n_k - n_q
    i = torch.arange(n_q, device=device).unsqueeze(1)
    j = torch.arange(n_k, device=device).unsqueeze(0)
    return j <= i + offset


def padding_mask(keep: torch.Tensor, query_keep: torch.Tensor | None = None) -> torch.Tensor:
    """The :func:`attention` ``mask`` of a key-padding mask ``keep (B, N_k)`` (True = real token).

    Without ``query_keep`` it is ``(B, 1, 1, N_k)``: every query reads the kept keys only, which is
    enough when every query's pattern holds a kept key (full attention). With ``query_keep``
    (broadcastable to ``(B, h, N_q)``, True = real query) it is ``(B, h, N_q, N_k)`` and padded
    queries keep their whole pattern, so that a pattern holding no kept key (causal, windowed)
    never leaves a padded row empty (NaN); padded rows' outputs are then meaningless, the caller
    discards them.
    """
    mask = keep[:, None, None, :]
    return mask if query_keep is None else mask | ~query_keep[..., None]


def sequence_padding_mask(keep: torch.Tensor | None, causal: bool) -> torch.Tensor | None:
    """The :func:`attention` ``mask`` of self-attention over one padded sequence per row, full or
    ``causal``, for the key-padding mask ``keep (B, N)`` (``None``: no mask): :func:`padding_mask`,
    with padded queries keeping their whole (causal) pattern so that no row is empty."""
    if keep is None:
        return None
    return padding_mask(keep, keep[:, None] if causal else None)


def _combined_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor | None:
    """Fold ``causal``, ``mask`` and ``bias`` into one SDPA ``attn_mask`` (bool, or float)."""
    if causal:
        cm = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        mask = cm if mask is None else mask & cm
    if bias is None:
        return mask
    bias = bias.to(q.dtype)
    if mask is None:
        return bias
    return bias.masked_fill(~mask, float("-inf"))


def _allowed(combined: torch.Tensor | None) -> torch.Tensor | None:
    """The keys a folded ``attn_mask`` (:func:`_combined_mask`) allows: a bool one as is; a float one
    allows every key it does not hide, hidden being ``-inf`` or at most ``finfo(dtype).min / 2`` (the
    additive masks of Hugging Face ``transformers``, read the same way for its eager attention)."""
    if combined is None or combined.dtype == torch.bool:
        return combined
    return combined > torch.finfo(combined.dtype).min / 2


def allowed_keys(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor | None:
    """Bool mask, broadcastable to ``(B, h, N_q, N_k)``, True where softmax attention with these
    arguments (see :func:`attention`) lets a query attend to a key: inside ``mask`` and the causal
    pattern and not hidden by ``bias`` (``-inf``, or at most ``finfo(dtype).min / 2``); ``None`` when
    there is no ``mask``, ``bias`` or ``causal``."""
    return _allowed(_combined_mask(q, k, mask, bias, causal))


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Naive softmax attention that materialises the ``(B, h, N_q, N_k)`` matrix.

    Returns ``out (B, h, N_q, d_v)``, and the probabilities (before dropout) when ``return_weights``.
    While capturing, records the probabilities with the scores, the values (when kept) and the
    :func:`allowed_keys` mask.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    combined = _combined_mask(q, k, mask, bias, causal)
    if combined is not None:
        if combined.dtype == torch.bool:
            scores = scores.masked_fill(~combined, float("-inf"))
        else:
            scores = scores + combined
    if perturbing():  # attnzoo.training: adversarial perturbation of the masked scores
        scores = perturb(scores, _allowed(combined))
    probs = scores.softmax(dim=-1)
    if capturing():
        values = v if wants("values") else None
        record(probs, scores, kind="softmax", values=values, mask=_allowed(combined))
    out = (F.dropout(probs, dropout_p) if dropout_p else probs) @ v
    return (out, probs) if return_weights else out


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention through SDPA; see the module docstring for the equation and shapes.

    Args:
        q, k, v: ``(B, h, N_q, d)``, ``(B, h, N_k, d)``, ``(B, h, N_k, d_v)``.
        mask: bool, broadcastable to ``(B, h, N_q, N_k)``, True = may attend.
        bias: float additive bias, broadcastable to ``(B, h, N_q, N_k)``.
        causal: mask keys after each query (aligned to the last keys when ``N_k > N_q``).
        scale: score scale; ``d ** -0.5`` when ``None``.
        dropout_p: attention dropout (apply only in training).
    """
    if capturing() or perturbing():
        return attention_reference(
            q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, dropout_p=dropout_p
        )
    if causal and mask is None and bias is None and q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p)
    attn_mask = _combined_mask(q, k, mask, bias, causal)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # SDPA's CPU kernels run ~15% faster on an additive mask than on a boolean one.
        attn_mask = torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, dropout_p=dropout_p)
