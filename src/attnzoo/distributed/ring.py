"""Ring attention: exact softmax attention over a sequence split across ranks.

Liu, Zaharia & Abbeel, "Ring Attention with Blockwise Transformers for Near-Infinite Context"
(arXiv:2310.01889, 2023). Rank ``r`` of ``W`` holds the contiguous shard ``r`` of the queries,
keys and values, ``(B, h, N/W, d)``. In ``W`` steps the key/value shards travel around the ring
(rank ``r`` sends to ``r + 1`` and receives from ``r - 1`` with point-to-point
``batch_isend_irecv``, the next transfer overlapping the current block's compute); each rank
attends its queries to the block it holds and merges the partial results with the log-sum-exp
rule of :mod:`attnzoo.kernels.blockwise`, so it computes, for its queries,

    O = softmax(scale * Q K^T [+ causal mask]) V        over the keys of *all* ranks

while holding, besides its own shard, at most two travelling key/value shards (the one in use and
the one arriving) and the scores of one ``(n, n)`` block. With ``causal=True`` rank ``r``'s
queries see earlier shards fully, their own shard through the causal mask, and later shards not
at all (that block's compute is skipped; the shard is still passed on). With contiguous shards
causal work is unbalanced (rank ``r`` computes ``r + 1`` blocks); load-balanced (striped or
zig-zag) shard orders are not implemented.

The backward pass is a second ring pass (the Ring Attention / FlashAttention backward): the block
probabilities are recomputed from the saved log-sum-exp, ``dQ`` accumulates locally, and each
block's ``dK``/``dV`` accumulators travel with the block until they come home to its rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from attnzoo.checks import check_tensor
from attnzoo.distributed._comm import agree, group_info, ring_shift, wait_all
from attnzoo.distributed._shards import layout_names, shard_layout
from attnzoo.kernels.blockwise import attention_block_grad, attention_with_lse, merge_partials

__all__ = ["ring_attention"]

_KV_TAG, _GRAD_TAG = 0, 1


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        scale: float,
        group: dist.ProcessGroup,
    ) -> torch.Tensor:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        dtype = _compute_dtype(q.dtype)
        qc = q.to(dtype)
        out = lse = None
        k_cur, v_cur = k, v
        for step in range(world):
            src = (rank - step) % world
            if step + 1 < world:
                (k_next, v_next), works = ring_shift([k_cur, v_cur], group, tag=_KV_TAG)
            if not causal or src <= rank:
                o, s = attention_with_lse(
                    qc, k_cur.to(dtype), v_cur.to(dtype), causal=causal and src == rank, scale=scale
                )
                out, lse = (o, s) if out is None else merge_partials(out, lse, o, s)
            if step + 1 < world:
                wait_all(works, group)
                k_cur, v_cur = k_next, v_next
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.group = causal, scale, group
        return out.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, dout: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None, None]:
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, group = ctx.causal, ctx.scale, ctx.group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        dtype = out.dtype
        qc, dout = q.to(dtype), dout.to(dtype)
        delta = (dout * out).sum(-1)
        dq = torch.zeros_like(qc)
        k_cur, v_cur = k, v
        dk_cur = torch.zeros(k.shape, dtype=dtype, device=k.device)
        dv_cur = torch.zeros(v.shape, dtype=dtype, device=v.device)
        for step in range(world):
            src = (rank - step) % world
            if step + 1 < world:
                (k_next, v_next), kv_works = ring_shift([k_cur, v_cur], group, tag=_KV_TAG)
            if not causal or src <= rank:
                gq, gk, gv = attention_block_grad(
                    qc,
                    k_cur.to(dtype),
                    v_cur.to(dtype),
                    dout,
                    lse,
                    delta,
                    causal=causal and src == rank,
                    scale=scale,
                )
                dq += gq
                dk_cur += gk
                dv_cur += gv
            if world > 1:
                # the block's gradient accumulators move on with it; after W hops they are home
                (dk_cur, dv_cur), grad_works = ring_shift([dk_cur, dv_cur], group, tag=_GRAD_TAG)
                wait_all(grad_works, group)
            if step + 1 < world:
                wait_all(kv_works, group)
                k_cur, v_cur = k_next, v_next
        return dq.to(q.dtype), dk_cur.to(k.dtype), dv_cur.to(v.dtype), None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Softmax attention over a sequence sharded across the ranks of ``group``.

    Every rank of the group calls this with its own contiguous shard (rank ``r`` holds positions
    ``[r n, (r + 1) n)`` of the full sequence, e.g. from :func:`attnzoo.distributed.shard_sequence`)
    and gets the rows of ``attnzoo.kernels.attention(Q, K, V, causal=causal, scale=scale)`` for its
    queries. Computation is in at least float32 (the log-sum-exp merge and the travelling
    ``dK``/``dV`` accumulators) and the output has the dtype of ``q``. Gradients are those of the
    sum of the per-rank losses; every rank must run the backward pass (it is a collective ring pass).
    Attention weights are never formed in full, so :mod:`attnzoo.capture` does not see them.

    Args:
        q, k: ``(B, h, n, d)`` local shards; v: ``(B, h, n, d_v)``. ``B``, ``h``, ``n``, ``d``,
            ``d_v``, the dtype and ``causal`` must agree on every rank.
        causal: causal attention over the full sequence.
        scale: score scale; ``d ** -0.5`` when ``None``.
        group: the process group over which the sequence is split (default: the world).

    Returns ``(B, h, n, d_v)``: this rank's rows of the output.

    Example (run on each of ``W`` ranks after ``torch.distributed.init_process_group``)::

        from attnzoo.distributed import gather_sequence, ring_attention, shard_sequence
        q, k, v = (shard_sequence(t, dim=2) for t in (q_full, k_full, v_full))
        out = ring_attention(q, k, v, causal=True)  # (B, h, N / W, d_v)
        out_full = gather_sequence(out, dim=2)      # equals attnzoo.kernels.attention(..., causal=True)
    """
    check_tensor(q, "q", floating=False, nonempty=False, finite=False)  # its device carries the checks
    group, _, _ = group_info(group)
    agree(lambda: shard_layout(q, k, v, causal, scale), layout_names(), group=group, device=q.device)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _RingAttention.apply(q, k, v, causal, scale, group)
