"""The executor of core attention disaggregation: runs the tasks of a
:class:`~attnzoo.distributed.CoreAttentionPlan` over ``torch.distributed``, forward and backward.

Every rank holds its home shard of the packed stream, ``q, k: (h, n, d)`` and ``v: (h, n, d_v)``
with ``n = T / W`` (no batch axis: one packed sequence, as in variable-length kernels). One call:

1. **dispatch**: each attention rank receives the query rows of its tasks and the key/value rows of
   each document prefix its tasks need, from their homes (point-to-point, only rows that are not
   already there; both sides derive the sizes from the plan);
2. **compute**: per task, causal attention of its queries ``[start, stop)`` over keys ``[0, stop)``
   of its document (:func:`attnzoo.kernels.blockwise.attention_with_lse`, in blocks of queries);
3. **return**: output and log-sum-exp rows go back to their homes.

The backward pass moves the output gradient like the queries, recomputes each task's
probabilities from its log-sum-exp (:func:`attnzoo.kernels.blockwise.attention_block_grad`), and
returns query gradients to their homes and key/value gradients to theirs, summed over every rank
that used them. Rows travel in the compute dtype ``s`` (at least float32; the log-sum-exp too), so
the bytes moved are exactly ``plan.traffic(AttentionShape(h, h, d, s, s))`` when ``d_v = d``
(``python -m attnzoo.distributed.report`` measures them on gloo).

Devices. Every transfer is a ``torch.distributed`` point-to-point request
(``batch_isend_irecv``) on the device of the inputs, and the routing indices follow the data to
that device, so the same code runs with ``gloo`` on CPU tensors and with ``nccl`` on CUDA tensors
(one GPU per rank, ``torch.cuda.set_device(local_rank)`` before the call); only the gloo path is
exercised in the test suite. :class:`~attnzoo.distributed.DisaggregatedAttention` wraps planner
and executor in a module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from attnzoo.checks import check_tensor
from attnzoo.distributed._comm import agree, dtype_code, exchange, group_info
from attnzoo.distributed._shards import check_shards
from attnzoo.distributed.planner import CoreAttentionPlan
from attnzoo.kernels.blockwise import attention_block_grad, attention_with_lse

__all__ = ["core_attention"]

_Q_TAG, _KV_TAG = 0, 1
QUERY_BLOCK = 1024  # queries per kernel call: bounds the (h, block, stop) score block


@dataclass(frozen=True)
class _Route:
    """Rows between homes and one attention rank's buffer. ``send[p]``: this rank's local rows that
    rank ``p``'s buffer takes (in its order); ``recv[p]``: positions of this rank's buffer filled
    from rank ``p``."""

    send: list[torch.Tensor]
    recv: list[torch.Tensor]
    size: int


@dataclass(frozen=True)
class _Routes:
    query: _Route
    kv: _Route
    tasks: list[tuple[int, int, int, int]]  # (query offset, queries, key/value offset, keys) per task


def _positions(plan: CoreAttentionPlan, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed-stream positions of the query rows and key/value rows ``rank``'s buffers hold."""
    offsets = plan.doc_offsets
    empty = torch.zeros(0, dtype=torch.long)
    mine = [t for t in plan.tasks if t.rank == rank]
    queries = [torch.arange(offsets[t.doc] + t.start, offsets[t.doc] + t.stop) for t in mine]
    kv = [torch.arange(offsets[d], offsets[d] + stop) for d, stop in plan.kv_prefixes(rank).items()]
    return torch.cat([empty, *queries]), torch.cat([empty, *kv])


def _routes(plan: CoreAttentionPlan, rank: int) -> _Routes:
    """The routes of ``rank`` for ``plan`` (pure: every rank derives every route from the plan)."""
    n, world = plan.tokens_per_rank, plan.world_size
    needs = [_positions(plan, p) for p in range(world)]

    def route(which: int) -> _Route:
        send = []
        for p in range(world):
            pos = needs[p][which]
            send.append(pos[pos // n == rank] - rank * n)
        mine = needs[rank][which] // n
        recv = [(mine == p).nonzero().flatten() for p in range(world)]
        return _Route(send, recv, int(mine.numel()))

    tasks, q_off = [], 0
    kv_off, off = {}, 0
    for doc, stop in plan.kv_prefixes(rank).items():
        kv_off[doc], off = off, off + stop
    for t in plan.tasks:
        if t.rank == rank:
            tasks.append((q_off, t.stop - t.start, kv_off[t.doc], t.stop))
            q_off += t.stop - t.start
    return _Routes(route(0), route(1), tasks)


def _gather(rows: torch.Tensor, route: _Route, group: dist.ProcessGroup, what: str, tag: int) -> torch.Tensor:
    """``(size, F)``: the buffer of ``route`` filled with home rows ``rows: (n, F)`` from every rank."""
    width, device = rows.shape[1], rows.device
    sends = [rows[idx.to(device)] for idx in route.send]
    got = exchange(sends, [(len(r), width) for r in route.recv], rows, group, what, tag=tag)
    buf = rows.new_empty(route.size, width)
    for pos, part in zip(route.recv, got):
        if part is not None:
            buf[pos.to(device)] = part
    return buf


def _scatter(
    buf: torch.Tensor, route: _Route, n: int, group: dist.ProcessGroup, what: str, tag: int
) -> torch.Tensor:
    """``(n, F)``: home rows, the sum of what every rank's buffer ``buf: (size, F)`` holds for them."""
    width, device = buf.shape[1], buf.device
    sends = [buf[pos.to(device)] for pos in route.recv]
    got = exchange(sends, [(len(s), width) for s in route.send], buf, group, what, tag=tag)
    out = buf.new_zeros(n, width)
    for idx, part in zip(route.send, got):
        if part is not None:
            out.index_add_(0, idx.to(device), part)
    return out


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(h, n, d) -> (n, h d)``."""
    return x.transpose(0, 1).reshape(x.shape[1], x.shape[0] * x.shape[2])


def _heads(rows: torch.Tensor, h: int, d: int) -> torch.Tensor:
    """``(m, h d) -> (h, m, d)``."""
    return rows.view(rows.shape[0], h, d).transpose(0, 1)


def _blocks(task: tuple[int, int, int, int]) -> list[tuple[int, int, int]]:
    """``(buffer row, queries, keys)`` of each query block of a task: block ``[a, b)`` of its
    queries sees the first ``stop - queries + b`` keys of the document."""
    q_off, count, _, stop = task
    first = stop - count
    return [
        (q_off + a, min(QUERY_BLOCK, count - a), first + min(a + QUERY_BLOCK, count))
        for a in range(0, count, QUERY_BLOCK)
    ]


class _CoreAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        routes: _Routes,
        scale: float,
        group: dist.ProcessGroup,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, n, d = q.shape
        dv = v.shape[-1]
        dtype = torch.promote_types(q.dtype, torch.float32)
        qb = _gather(_rows(q.to(dtype)), routes.query, group, "core_attention's query dispatch", _Q_TAG)
        kv_rows = torch.cat([_rows(k.to(dtype)), _rows(v.to(dtype))], dim=1)
        kvb = _gather(kv_rows, routes.kv, group, "core_attention's key/value dispatch", _KV_TAG)
        kb, vb = _heads(kvb[:, : h * d], h, d), _heads(kvb[:, h * d :], h, dv)
        qh = _heads(qb, h, d)
        out = qb.new_empty(h, routes.query.size, dv)
        lse = qb.new_empty(h, routes.query.size)
        for task in routes.tasks:
            kv_off = task[2]
            for row, count, keys in _blocks(task):
                o, s = attention_with_lse(
                    qh[:, row : row + count],
                    kb[:, kv_off : kv_off + keys],
                    vb[:, kv_off : kv_off + keys],
                    causal=True,
                    scale=scale,
                )
                out[:, row : row + count], lse[:, row : row + count] = o, s
        rows = torch.cat([_rows(out), lse.t()], dim=1)
        back = _scatter(rows, routes.query, n, group, "core_attention's output return", _Q_TAG)
        ctx.save_for_backward(qb, kvb, out, lse)
        ctx.routes, ctx.scale, ctx.group, ctx.shape = routes, scale, group, (h, n, d, dv, q.dtype)
        out_local = _heads(back[:, : h * dv], h, dv).to(q.dtype)
        lse_local = back[:, h * dv :].t().contiguous()
        ctx.mark_non_differentiable(lse_local)
        return out_local, lse_local

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, dout: torch.Tensor, _dlse: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None, None]:
        qb, kvb, out, lse = ctx.saved_tensors
        routes, scale, group = ctx.routes, ctx.scale, ctx.group
        h, n, d, dv, in_dtype = ctx.shape
        what = "core_attention's gradient dispatch"
        dob = _gather(_rows(dout.to(qb.dtype)), routes.query, group, what, _Q_TAG)
        do = _heads(dob, h, dv)
        qh, kb, vb = _heads(qb, h, d), _heads(kvb[:, : h * d], h, d), _heads(kvb[:, h * d :], h, dv)
        delta = (do * out).sum(-1)
        dq, dk, dv_ = torch.zeros_like(qh), torch.zeros_like(kb), torch.zeros_like(vb)
        for task in routes.tasks:
            kv_off = task[2]
            for row, count, keys in _blocks(task):
                rows, cols = slice(row, row + count), slice(kv_off, kv_off + keys)
                gq, gk, gv = attention_block_grad(
                    qh[:, rows],
                    kb[:, cols],
                    vb[:, cols],
                    do[:, rows],
                    lse[:, rows],
                    delta[:, rows],
                    causal=True,
                    scale=scale,
                )
                dq[:, rows] = gq
                dk[:, cols] += gk
                dv_[:, cols] += gv
        what = "core_attention's query-gradient return"
        dq_local = _scatter(_rows(dq), routes.query, n, group, what, _Q_TAG)
        what = "core_attention's key/value-gradient return"
        dkv = _scatter(torch.cat([_rows(dk), _rows(dv_)], dim=1), routes.kv, n, group, what, _KV_TAG)
        return (
            _heads(dq_local, h, d).to(in_dtype),
            _heads(dkv[:, : h * d], h, d).to(in_dtype),
            _heads(dkv[:, h * d :], h, dv).to(in_dtype),
            None,
            None,
            None,
        )


def core_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: CoreAttentionPlan,
    *,
    scale: float | None = None,
    group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention within each packed document, computed where ``plan`` places its tasks.

    Every rank of ``group`` calls this with its home shard of the packed stream and the same plan
    (e.g. from :func:`attnzoo.distributed.plan_core_attention` on the same document lengths) and
    gets, for its tokens, the rows of causal attention over each token's own document, as if
    computed in one process, plus their natural-log log-sum-exp. Computation is in at least float32;
    the output has the dtype of ``q``. Gradients (through the output; the log-sum-exp is not
    differentiable) are those of the sum of the per-rank losses; every rank must run the backward.

    Args:
        q, k: ``(h, n, d)``; v: ``(h, n, d_v)``: this rank's ``n = plan.tokens_per_rank`` tokens.
        plan: a :class:`~attnzoo.distributed.CoreAttentionPlan` for ``W = group size`` ranks,
            identical on every rank (checked).
        scale: score scale; ``d ** -0.5`` when ``None``.
        group: the ranks of the plan (default: the world).

    Returns ``(out (h, n, d_v), lse (h, n))``. Raises a
    :class:`~attnzoo.distributed.RankFailure` if another rank dies or hangs.

    Example (on each of ``W`` ranks)::

        plan = plan_core_attention(doc_lengths, W, tolerance=0.1)
        n = plan.tokens_per_rank
        out, lse = core_attention(q_full[:, r * n:(r + 1) * n], k_local, v_local, plan)
    """
    check_tensor(q, "q", floating=False, nonempty=False, finite=False)  # its device carries the checks
    group, _, world = group_info(group)

    def check() -> list[int]:
        if not isinstance(plan, CoreAttentionPlan):
            raise TypeError(
                f"plan must be an attnzoo.distributed.CoreAttentionPlan, got {type(plan).__name__}"
            )
        if plan.world_size != world:
            raise ValueError(f"plan is for {plan.world_size} ranks but the process group has {world}")
        check_shards(q, k, v, scale, ndim=3)
        if q.shape[1] != plan.tokens_per_rank:
            raise ValueError(
                f"q holds {q.shape[1]} tokens (dimension 1 of shape {tuple(q.shape)}) but the plan gives "
                f"every rank {plan.tokens_per_rank}"
            )
        return [*q.shape, v.shape[-1], dtype_code(q.dtype), plan.fingerprint()]

    names = ["number of heads", "tokens per rank", "head dim of q/k", "head dim of v", "dtype"]
    names.append("plan checksum")
    agree(check, names, group=group, device=q.device)
    routes = _routes(plan, dist.get_rank(group))
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _CoreAttention.apply(q, k, v, routes, scale, group)
