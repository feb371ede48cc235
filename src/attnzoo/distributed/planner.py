"""Core attention disaggregation (CAD): plans that split packed documents into core-attention tasks
and place them on attention ranks.

Zhuang, Chen et al., "Efficient Long-context Language Model Training by Core Attention
Disaggregation" (DistCA, arXiv:2510.18121, 2025; official code hao-ai-lab/distca). Documents of
lengths ``L_0, L_1, ...`` are packed into one token stream of ``T`` tokens, held by ``W`` ranks in
contiguous equal shards of ``T / W`` tokens (the *home* of a token: where its q/k/v are produced
and where its output is needed). Core attention is causal attention within each document. A
*task* is a contiguous range of queries ``[start, stop)`` of one document with its causal key
prefix ``[0, stop)``; its cost is the number of query-key pairs,
``sum_{i=start}^{stop-1} (i + 1)``. A plan partitions every document's queries into tasks and
gives each task an attention rank; the rank receives the task's q rows and the key/value prefix it
does not hold, and sends the output rows (and their log-sum-exp) back to their homes.

Three plans:

* :func:`plan_local` - no disaggregation: every query is computed at its home (a document cut by a
  shard border fetches its earlier keys). Moves almost nothing; the load follows the document mix.
* :func:`plan_per_document` - the naive per-document placement: whole documents, heaviest first,
  each on the least-loaded rank (its home on a tie). Balances as far as whole documents allow and
  ignores bytes.
* :func:`plan_core_attention` - the planner: starting from :func:`plan_local`, repeatedly moves the
  piece of work with the fewest bytes per unit of work from the most to the least loaded rank,
  splitting tasks at query boundaries, until every rank is within ``(1 + tolerance)`` of the mean.

The planner follows DistCA's greedy (``distca/planner/planner.py``: recipients below the mean take
work from donors above it, candidates ranked by communication bytes per FLOP, tolerance relative to
the mean). attnzoo's own choices: a moved piece is the head (earliest queries, short key prefix)
or the tail (latest queries, fewest queries per unit of work) of a task, whichever moves fewer
bytes per pair, where DistCA moves head-and-tail pairs and prices the whole key/value of the
document; the price counts only the key/value prefix the recipient does not hold yet; pieces and
what remains keep at least ``min_chunk`` queries (DistCA's observation: kernels keep their
throughput on shards of >= 128 tokens).

Bytes are those of one attention layer (:class:`AttentionShape`); :meth:`CoreAttentionPlan.traffic`
counts them from the plan as :func:`attnzoo.distributed.core_attention` moves them. The data
classes live in :mod:`attnzoo.distributed._plan`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from attnzoo.checks import check_float, check_int
from attnzoo.distributed._plan import (
    DEFAULT_SHAPE,
    AttentionShape,
    CoreAttentionPlan,
    CoreAttentionTask,
    Traffic,
    _pairs,
)

__all__ = [
    "AttentionShape",
    "CoreAttentionPlan",
    "CoreAttentionTask",
    "Traffic",
    "plan_core_attention",
    "plan_local",
    "plan_per_document",
]


def _check_layout(doc_lengths: object, world_size: object) -> tuple[tuple[int, ...], int]:
    world_size = check_int(world_size, "world_size")
    if isinstance(doc_lengths, (str, bytes)) or not isinstance(doc_lengths, Sequence):
        raise TypeError(f"doc_lengths must be a sequence of ints, got {type(doc_lengths).__name__}")
    if not doc_lengths:
        raise ValueError("doc_lengths must name at least one document")
    lengths = tuple(check_int(n, f"doc_lengths[{i}]") for i, n in enumerate(doc_lengths))
    total = sum(lengths)
    if total % world_size:
        raise ValueError(
            f"doc_lengths sum to {total} tokens, not a multiple of world_size={world_size}: every rank "
            "holds an equal contiguous shard of the packed stream (pad the last document)"
        )
    return lengths, world_size


def _check_shape(shape: object) -> AttentionShape:
    if not isinstance(shape, AttentionShape):
        raise TypeError(f"shape must be an attnzoo.distributed.AttentionShape, got {type(shape).__name__}")
    return shape


def _local_tasks(lengths: Sequence[int], world_size: int) -> list[CoreAttentionTask]:
    n = sum(lengths) // world_size
    tasks, base = [], 0
    for doc, length in enumerate(lengths):
        start = 0
        while start < length:
            home = (base + start) // n
            stop = min(length, (home + 1) * n - base)
            tasks.append(CoreAttentionTask(doc, start, stop, home))
            start = stop
        base += length
    return tasks


def plan_local(
    doc_lengths: Sequence[int], world_size: int, *, shape: AttentionShape = DEFAULT_SHAPE
) -> CoreAttentionPlan:
    """Every query computed at its home rank (no disaggregation); see the module docstring."""
    lengths, world_size = _check_layout(doc_lengths, world_size)
    tasks = tuple(_local_tasks(lengths, world_size))
    return CoreAttentionPlan(lengths, world_size, tasks, "local", None, _check_shape(shape))


def plan_per_document(
    doc_lengths: Sequence[int], world_size: int, *, shape: AttentionShape = DEFAULT_SHAPE
) -> CoreAttentionPlan:
    """Naive per-document placement: whole documents, heaviest first, each on the least-loaded rank,
    preferring the rank holding the document's first token on a tie (longest-processing-time)."""
    lengths, world_size = _check_layout(doc_lengths, world_size)
    layout = CoreAttentionPlan(lengths, world_size, (), "per_document")
    loads = [0] * world_size
    heap = [(0, r) for r in range(world_size)]
    placed = []
    for doc in sorted(range(len(lengths)), key=lambda d: (-lengths[d], d)):
        while heap[0][0] != loads[heap[0][1]]:  # drop stale entries
            heapq.heappop(heap)
        home = layout.doc_offsets[doc] // layout.tokens_per_rank
        rank = home if loads[home] <= heap[0][0] else heap[0][1]
        loads[rank] += _pairs(0, lengths[doc])
        heapq.heappush(heap, (loads[rank], rank))
        placed.append(CoreAttentionTask(doc, 0, lengths[doc], rank))
    tasks = tuple(sorted(placed, key=lambda t: t.doc))
    return CoreAttentionPlan(lengths, world_size, tasks, "per_document", None, _check_shape(shape))


def _prefix_stop(start: int, budget: int) -> int:
    """Largest ``e >= start`` with ``_pairs(start, e) <= budget``."""
    x = 2 * budget + start * (start + 1)
    e = (math.isqrt(4 * x + 1) - 1) // 2
    return max(e, start)


def _suffix_start(stop: int, budget: int) -> int:
    """Smallest ``s <= stop`` with ``_pairs(s, stop) <= budget``."""
    x = stop * (stop + 1) - 2 * budget
    if x <= 0:
        return 0
    s = (math.isqrt(4 * x + 1) - 1) // 2  # s (s + 1) <= x
    return min(s if s * (s + 1) >= x else s + 1, stop)


class _Balancer:
    """Mutable state of :func:`plan_core_attention`: tasks per rank, loads, held key prefixes."""

    def __init__(self, plan: CoreAttentionPlan, min_chunk: int) -> None:
        self.plan, self.min_chunk = plan, min_chunk
        self.by_rank: list[list[CoreAttentionTask]] = [[] for _ in range(plan.world_size)]
        for task in plan.tasks:
            self.by_rank[task.rank].append(task)
        self.loads = plan.loads()
        self.held = [plan.kv_prefixes(r) for r in range(plan.world_size)]
        shape = plan.shape
        self.q_cost, self.kv_cost = shape.q_bytes + shape.out_bytes, shape.kv_bytes

    def _off_home(self, doc: int, start: int, stop: int, rank: int) -> int:
        if stop <= start:
            return 0
        base = self.plan.doc_offsets[doc]
        return sum(c for h, c in self.plan._homes(base + start, base + stop) if h != rank)

    def _price(self, task: CoreAttentionTask, start: int, stop: int, to: int) -> float:
        moved_q = self._off_home(task.doc, start, stop, to) - self._off_home(task.doc, start, stop, task.rank)
        have = self.held[to].get(task.doc, 0)
        new_kv = self._off_home(task.doc, have, stop, to)
        return (moved_q * self.q_cost + new_kv * self.kv_cost) / _pairs(start, stop)

    def _pieces(self, task: CoreAttentionTask, budget: int) -> list[tuple[int, int]]:
        if task.pairs <= budget:
            return [(task.start, task.stop)]
        m, out = self.min_chunk, []
        e = _prefix_stop(task.start, budget)
        if e - task.start >= m and task.stop - e >= m:
            out.append((task.start, e))
        s = _suffix_start(task.stop, budget)
        if task.stop - s >= m and s - task.start >= m:
            out.append((s, task.stop))
        return out

    def move(self, donor: int, to: int, budget: int) -> bool:
        """Move the cheapest piece (bytes per pair) of ``donor``'s work within ``budget`` to ``to``."""
        best: tuple[float, int, int, int] | None = None  # (price, -pairs, task index, start)
        choice: tuple[int, int, int] | None = None
        for i, task in enumerate(self.by_rank[donor]):
            for start, stop in self._pieces(task, budget):
                key = (self._price(task, start, stop, to), -_pairs(start, stop), i, start)
                if best is None or key < best:
                    best, choice = key, (i, start, stop)
        if choice is None:
            return False
        i, start, stop = choice
        task = self.by_rank[donor].pop(i)
        if start > task.start:
            self.by_rank[donor].append(CoreAttentionTask(task.doc, task.start, start, donor))
        if stop < task.stop:
            self.by_rank[donor].append(CoreAttentionTask(task.doc, stop, task.stop, donor))
        self.by_rank[to].append(CoreAttentionTask(task.doc, start, stop, to))
        pairs = _pairs(start, stop)
        self.loads[donor] -= pairs
        self.loads[to] += pairs
        self.held[to][task.doc] = max(self.held[to].get(task.doc, 0), stop)
        return True

    def tasks(self) -> tuple[CoreAttentionTask, ...]:
        every = [t for tasks in self.by_rank for t in tasks]
        return tuple(sorted(every, key=lambda t: (t.doc, t.start)))


def plan_core_attention(
    doc_lengths: Sequence[int],
    world_size: int,
    *,
    tolerance: float = 0.1,
    min_chunk: int = 128,
    shape: AttentionShape = DEFAULT_SHAPE,
) -> CoreAttentionPlan:
    """Split packed documents into core-attention tasks and balance them over ``world_size`` ranks.

    Args:
        doc_lengths: token counts of the packed documents, in stream order; their sum must be a
            multiple of ``world_size`` (rank ``r`` holds tokens ``[r T / W, (r + 1) T / W)``).
        world_size: number of attention ranks (the ranks that also hold the tokens).
        tolerance: target load imbalance: the busiest rank computes at most ``(1 + tolerance)``
            times the mean number of query-key pairs (the planner aims at ``1 + tolerance / 2``).
        min_chunk: fewest queries in a piece split off a task and in what it leaves behind (a task
            moves whole when it is smaller than its budget).
        shape: the attention layer whose bytes the planner minimises (:class:`AttentionShape`).

    Returns a :class:`CoreAttentionPlan`; ``plan.imbalance`` is the load ratio reached. It is above
    ``1 + tolerance`` only when no piece of ``min_chunk`` queries fits any more (e.g. a rank whose
    only document is so long that its smallest piece outweighs the remaining imbalance); lower
    ``min_chunk`` then.
    """
    tolerance = check_float(tolerance, "tolerance", minimum=0.0)
    min_chunk = check_int(min_chunk, "min_chunk")
    plan = plan_local(doc_lengths, world_size, shape=_check_shape(shape))
    state = _Balancer(plan, min_chunk)
    mean = sum(state.loads) / plan.world_size
    limit, aim = (1 + tolerance) * mean, (1 + tolerance / 2) * mean
    stuck: set[int] = set()
    while True:
        donors = [r for r in range(plan.world_size) if r not in stuck and state.loads[r] > limit]
        if not donors:
            break
        donor = max(donors, key=lambda r: (state.loads[r], -r))
        to = min(range(plan.world_size), key=lambda r: (state.loads[r], r))
        budget = int(min(state.loads[donor] - aim, aim - state.loads[to]))
        if budget <= 0 or not state.move(donor, to, budget):
            stuck.add(donor)
    return CoreAttentionPlan(plan.doc_lengths, plan.world_size, state.tasks(), "distca", tolerance, shape)
