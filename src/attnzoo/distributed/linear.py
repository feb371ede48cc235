"""Sequence-parallel causal (gated) linear attention: the recurrence of
:mod:`attnzoo.kernels.linear` over a sequence split across ranks.

Per batch and head, with state ``S_t: (d_k, d_v)`` and log gate ``g_t <= 0``::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

Rank ``r`` of ``W`` holds shard ``r`` (``n`` consecutive tokens). The recurrence is linear in the
state, so the state entering shard ``r`` is an exclusive prefix over the ranks before it::

    U_j = sum_{t in shard j} diag(exp(sum_{s in shard j, s > t} g_s)) k_t^T v_t    (shard j from S = 0)
    G_j = sum_{t in shard j} g_t                                                   (shard j's log decay)
    S_in(r) = diag(exp(G_0 + ... + G_{r-1})) S_init + sum_{j < r} diag(exp(G_{j+1} + ... + G_{r-1})) U_j

Each rank computes its ``U_r`` (one ``O(n d_k d_v)`` product; every exponent is <= 0) and ``G_r``,
one differentiable ``all_gather`` of each gives every rank the prefix, and the shard then runs
:func:`attnzoo.kernels.linear.linear_attention` from ``S_in(r)``. Communication is ``W`` states
of ``(B, h, d_k, d_v)`` per rank, independent of the sequence length.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from attnzoo.checks import check_tensor
from attnzoo.distributed._comm import agree, all_gather, dtype_code, group_info, replicated
from attnzoo.kernels.linear import DEFAULT_CHUNK_SIZE, broadcast_log_gate, linear_attention

__all__ = ["sequence_parallel_linear_attention"]


def sequence_parallel_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    log_gate: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
    group: dist.ProcessGroup | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (gated) linear attention over a sequence sharded across the ranks of ``group``.

    Every rank calls this with its own contiguous shard (rank ``r`` holds tokens
    ``[r n, (r + 1) n)``) and gets its rows of
    ``attnzoo.kernels.linear.linear_attention(Q, K, V, log_gate=G, initial_state=S_init)``.
    Gradients are those of the sum of the per-rank losses; every rank must run the backward pass.

    Args:
        q, k: ``(B, h, n, d_k)`` local shards; v: ``(B, h, n, d_v)``.
        log_gate: this shard's log gates, broadcastable to ``(B, h, n, d_k)`` (``(B, h, n, 1)`` or a
            per-head ``(h, 1, 1)`` for a scalar decay), values <= 0; ``None`` = no decay. Given on
            every rank or on none, with the same last dimension. A gate that broadcasts over the
            sequence (a per-head constant) is a parameter each rank applies to its own tokens: its
            gradient on each rank is that rank's share, to be summed over ranks like any
            replicated parameter.
        initial_state: ``(B, h, d_k, d_v)`` state before the first token of the *whole* sequence,
            held identically by every rank (a replicated tensor: its gradient is the full gradient
            on every rank), or ``None`` on every rank.
        scale: output scale.
        group: the process group over which the sequence is split (default: the world).
        chunk_size: chunk length of the local :func:`~attnzoo.kernels.linear.linear_attention`.

    Returns ``(o (B, h, n, d_v), state (B, h, d_k, d_v))``: this rank's outputs (dtype of ``q``) and
    the state after this rank's shard (compute dtype, at least float32); on the last rank that is
    the final state of the whole sequence.

    Example (run on each rank after ``torch.distributed.init_process_group``)::

        from attnzoo.distributed import sequence_parallel_linear_attention, shard_sequence
        q, k, v, g = (shard_sequence(t, dim=2) for t in (q_full, k_full, v_full, g_full))
        o, state = sequence_parallel_linear_attention(q, k, v, log_gate=g)
    """
    check_tensor(q, "q", floating=False, nonempty=False, finite=False)  # its device carries the checks
    group, rank, world = group_info(group)
    gate: torch.Tensor | None = None

    def check() -> list[int]:
        nonlocal gate
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a float, got {type(scale).__name__}")
        check_tensor(q, "q", ndim=4, finite=False)
        b, h, n, dk = q.shape
        check_tensor(k, "k", shape=q.shape, finite=False)
        check_tensor(v, "v", shape=(b, h, n, None), finite=False)
        dv = v.shape[-1]
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        if log_gate is not None:
            gate = broadcast_log_gate(log_gate, b, h, n, dk, note=" (n = the local shard length)")
        if initial_state is not None:
            check_tensor(initial_state, "initial_state", shape=(b, h, dk, dv), finite=False)
        width = 0 if gate is None else gate.shape[-1]
        return [b, h, n, dk, dv, width, int(initial_state is not None), dtype_code(q.dtype)]

    names = [
        "batch size",
        "number of heads",
        "shard length",
        "key dim",
        "value dim",
        "log_gate width (0 = no log_gate)",
        "initial_state given",
        "dtype",
    ]
    agree(check, names, group=group, device=q.device)

    dtype = torch.promote_types(q.dtype, torch.float32)
    kc, vc = k.to(dtype), v.to(dtype)
    before = (torch.arange(world, device=q.device) < rank).view(world, 1, 1, 1)
    if gate is None:
        local = kc.transpose(-1, -2) @ vc
        states = all_gather(local, group)  # (W, B, h, d_k, d_v)
        incoming = (states * before.unsqueeze(-1).to(dtype)).sum(0)
        decay_in = None
    else:
        g = gate.to(dtype)
        from_t = g.flip(2).cumsum(2).flip(2)  # sum over s >= t of g_s
        after_t = F.pad(from_t[:, :, 1:], (0, 0, 0, 1))  # sum over s > t
        local = (kc * after_t.exp()).transpose(-1, -2) @ vc
        states = all_gather(local, group)
        totals = all_gather(from_t[:, :, 0], group)  # (W, B, h, width)
        kept = totals * before  # shards j < r only
        from_j = kept.flip(0).cumsum(0).flip(0)  # sum over j <= m < r of G_m
        after_j = torch.cat([from_j[1:], torch.zeros_like(from_j[:1])])  # sum over j < m < r
        weights = after_j.masked_fill(~before, float("-inf")).exp()
        incoming = (weights.unsqueeze(-1) * states).sum(0)
        decay_in = from_j[0].exp().unsqueeze(-1)  # exp(G_0 + ... + G_{r-1})
    if initial_state is not None:
        init = replicated(initial_state, group).to(dtype)
        incoming = incoming + (init if decay_in is None else decay_in * init)
    return linear_attention(
        q, k, v, log_gate=log_gate, initial_state=incoming, scale=scale, chunk_size=chunk_size
    )
