"""Blockwise softmax attention: attention over one block of keys at a time, merged exactly.

For queries ``Q: (B, h, N_q, d)`` against one block of keys ``K: (B, h, N_k, d)`` and values
``V: (B, h, N_k, d_v)``, with scores ``s_ij = scale * q_i . k_j`` (``-inf`` where masked),
:func:`attention_with_lse` returns the block's normalised output and log-sum-exp::

    lse_i = log sum_j exp(s_ij),        out_i = sum_j exp(s_ij - lse_i) v_j

Partial results over disjoint key sets ``A`` and ``B`` combine (:func:`merge_partials`) into the
result over ``A u B`` without ever forming the full score matrix::

    lse = log(exp(lse_A) + exp(lse_B)),   out = exp(lse_A - lse) out_A + exp(lse_B - lse) out_B

which is the online-softmax / log-sum-exp rule of FlashAttention and Ring Attention.
:func:`attention_block_grad` is the matching backward for one block: it recomputes the block's
probabilities ``P = exp(S - lse)`` from the *final* (merged) ``lse`` and returns the block's
contributions to ``dQ``, ``dK`` and ``dV``; summing the contributions of every block gives the
gradients of full softmax attention (:func:`attnzoo.kernels.attention`).

A query row whose keys are all masked in a block contributes nothing (``lse = -inf``, ``out = 0``).
These functions do not report to :mod:`attnzoo.capture`: a block's probabilities are only a slice
of an attention matrix normalised over keys the block does not see.
"""

from __future__ import annotations

import torch

from attnzoo.kernels.attention import causal_mask

__all__ = ["attention_block_grad", "attention_with_lse", "merge_partials"]


def _masked_scores(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float | None
) -> tuple[torch.Tensor, float]:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if causal:
        cm = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        mask = cm if mask is None else mask & cm
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores, scale


def attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``q`` over one key block, with the block's log-sum-exp.

    Args:
        q, k, v: ``(B, h, N_q, d)``, ``(B, h, N_k, d)``, ``(B, h, N_k, d_v)``.
        mask: bool, broadcastable to ``(B, h, N_q, N_k)``, True = may attend.
        causal: mask keys after each query (aligned to the last keys, as in
            :func:`attnzoo.kernels.attention`).
        scale: score scale; ``d ** -0.5`` when ``None``.

    Returns ``(out (B, h, N_q, d_v), lse (B, h, N_q))``, both in the dtype of the inputs; a row with
    no allowed key has ``lse = -inf`` and ``out = 0``.
    """
    scores, _ = _masked_scores(q, k, mask, causal, scale)
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)
    weights = (scores - row_max).exp()
    total = weights.sum(dim=-1, keepdim=True)
    out = (weights @ v) / total.masked_fill(total == 0, 1.0)
    lse = (row_max + total.log()).squeeze(-1)
    return out, lse


def merge_partials(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key sets: ``(out (B, h, N_q, d_v), lse (B, h, N_q))``.

    ``out_*`` are ``(B, h, N_q, d_v)`` and ``lse_*`` are ``(B, h, N_q)`` as returned by
    :func:`attention_with_lse`; rows where both sides are empty (``lse = -inf``) stay empty.
    """
    if out_a.shape != out_b.shape or lse_a.shape != lse_b.shape or out_a.shape[:-1] != lse_a.shape:
        raise ValueError(
            "merge_partials needs out_a/out_b of one shape (B, h, N_q, d_v) and lse_a/lse_b of shape "
            f"(B, h, N_q); got out {tuple(out_a.shape)}, {tuple(out_b.shape)} and lse "
            f"{tuple(lse_a.shape)}, {tuple(lse_b.shape)}"
        )
    lse = torch.logaddexp(lse_a, lse_b)
    empty = lse == float("-inf")
    ref = lse.masked_fill(empty, 0.0)
    w_a = (lse_a - ref).exp().unsqueeze(-1)
    w_b = (lse_b - ref).exp().unsqueeze(-1)
    return w_a * out_a + w_b * out_b, lse


def attention_block_grad(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One key block's share of the softmax-attention gradients, recomputed from the final ``lse``.

    With ``P = exp(S - lse)`` (the block's columns of the full probability matrix), ``dO`` the
    gradient of the full output ``O`` and ``delta_i = sum_c dO_ic O_ic``::

        dV = P^T dO,   dS = P * (dO V^T - delta),   dQ = scale dS K,   dK = scale dS^T Q

    Args:
        q, k, v: as in :func:`attention_with_lse` (``k``, ``v`` the block's keys and values).
        dout: ``(B, h, N_q, d_v)`` gradient of the full attention output.
        lse: ``(B, h, N_q)`` log-sum-exp over *all* keys (the merged one).
        delta: ``(B, h, N_q)``, ``(dout * out).sum(-1)`` for the full output ``out``.
        mask, causal, scale: as in :func:`attention_with_lse` for this block.

    Returns ``(dq (B, h, N_q, d), dk (B, h, N_k, d), dv (B, h, N_k, d_v))``; ``dq`` is this block's
    contribution only (sum over blocks), ``dk`` and ``dv`` are the block's full gradients when
    ``q`` holds every query.
    """
    scores, scale = _masked_scores(q, k, mask, causal, scale)
    ref = lse.masked_fill(lse == float("-inf"), 0.0).unsqueeze(-1)
    probs = (scores - ref).exp()
    dv = probs.transpose(-2, -1) @ dout
    dscores = probs * (dout @ v.transpose(-2, -1) - delta.unsqueeze(-1))
    dq = scale * (dscores @ k)
    dk = scale * (dscores.transpose(-2, -1) @ q)
    return dq, dk, dv
