"""The data of core attention disaggregation: the attention layer's sizes (:class:`AttentionShape`),
tasks, plans and the bytes a plan moves (:class:`Traffic`). The planners live in
:mod:`attnzoo.distributed.planner` (its docstring defines tasks, homes and costs), the executor in
:mod:`attnzoo.distributed.executor`."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

from attnzoo.checks import check_int

__all__ = ["AttentionShape", "CoreAttentionPlan", "CoreAttentionTask", "Traffic"]


@dataclass(frozen=True)
class AttentionShape:
    """The per-token sizes of one attention layer (default: Llama-3-8B in bfloat16, as in DistCA's
    evaluation): ``num_heads`` query heads and ``num_kv_heads`` key/value heads of ``head_dim``,
    ``element_bytes`` per element, ``lse_bytes`` per log-sum-exp value (float32).

    :func:`attnzoo.distributed.core_attention` moves rows in its compute dtype (at least float32,
    the log-sum-exp too) with as many key/value heads as query heads: its bytes are those of
    ``AttentionShape(h, h, d, s, s)`` with ``s`` the compute dtype's size (checked in the tests and
    measured in ``python -m attnzoo.distributed.report``)."""

    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    element_bytes: int = 2
    lse_bytes: int = 4

    def __post_init__(self) -> None:
        for name in ("num_heads", "num_kv_heads", "head_dim", "element_bytes", "lse_bytes"):
            check_int(getattr(self, name), name)

    @property
    def q_bytes(self) -> int:
        """Bytes of one token's queries (also of its output gradient and query gradient)."""
        return self.num_heads * self.head_dim * self.element_bytes

    @property
    def kv_bytes(self) -> int:
        """Bytes of one token's key and value."""
        return 2 * self.num_kv_heads * self.head_dim * self.element_bytes

    @property
    def out_bytes(self) -> int:
        """Bytes of one token's output and its log-sum-exp per head."""
        return self.num_heads * (self.head_dim * self.element_bytes + self.lse_bytes)

    def flops(self, pairs: int) -> int:
        """Forward FLOPs of ``pairs`` query-key pairs: ``Q K^T`` and ``P V``, 2 per multiply-add."""
        return 4 * self.num_heads * self.head_dim * pairs


DEFAULT_SHAPE = AttentionShape()


def _pairs(start: int, stop: int) -> int:
    """Causal query-key pairs of queries ``[start, stop)`` of a document: ``sum (i + 1)``."""
    return (stop * (stop + 1) - start * (start + 1)) // 2


@dataclass(frozen=True)
class CoreAttentionTask:
    """Queries ``[start, stop)`` of document ``doc`` (positions within the document) attending to
    keys ``[0, stop)`` of it, computed on attention rank ``rank``."""

    doc: int
    start: int
    stop: int
    rank: int

    @property
    def pairs(self) -> int:
        return _pairs(self.start, self.stop)


@dataclass(frozen=True)
class Traffic:
    """Bytes one attention layer moves between ranks under a plan.

    ``q_tokens``/``kv_tokens``: query rows and key/value rows sent to attention ranks that are not
    their home. Forward: q and k/v rows out, output and log-sum-exp rows back. Backward: output
    gradient rows out, query and key/value gradient rows back. ``max_rank_bytes``: forward bytes
    sent plus received by the busiest rank."""

    q_tokens: int
    kv_tokens: int
    forward_bytes: int
    backward_bytes: int
    max_rank_bytes: int


@dataclass(frozen=True)
class CoreAttentionPlan:
    """Tasks that cover every query of every document exactly once, placed on ``world_size`` ranks.

    ``doc_lengths`` are the packed documents in stream order; rank ``r`` is home of tokens
    ``[r T / W, (r + 1) T / W)``. ``method`` names the planner, ``tolerance`` its target."""

    doc_lengths: tuple[int, ...]
    world_size: int
    tasks: tuple[CoreAttentionTask, ...]
    method: str
    tolerance: float | None = None
    shape: AttentionShape = DEFAULT_SHAPE

    @cached_property
    def tokens_per_rank(self) -> int:
        return sum(self.doc_lengths) // self.world_size

    @cached_property
    def doc_offsets(self) -> tuple[int, ...]:
        """Position of each document's first token in the packed stream."""
        offsets, total = [], 0
        for length in self.doc_lengths:
            offsets.append(total)
            total += length
        return tuple(offsets)

    def loads(self) -> list[int]:
        """Query-key pairs computed by each rank."""
        loads = [0] * self.world_size
        for task in self.tasks:
            loads[task.rank] += task.pairs
        return loads

    @property
    def imbalance(self) -> float:
        """Load of the busiest rank over the mean load (1.0 is perfect balance)."""
        loads = self.loads()
        return max(loads) * self.world_size / sum(loads)

    def kv_prefixes(self, rank: int) -> dict[int, int]:
        """``{doc: stop}``: the key/value prefix ``[0, stop)`` of each document ``rank`` attends to."""
        prefixes: dict[int, int] = {}
        for task in self.tasks:
            if task.rank == rank:
                prefixes[task.doc] = max(prefixes.get(task.doc, 0), task.stop)
        return dict(sorted(prefixes.items()))

    def _homes(self, start: int, stop: int) -> list[tuple[int, int]]:
        """``[(home rank, tokens)]`` of the packed-stream range ``[start, stop)``."""
        n, out = self.tokens_per_rank, []
        for home in range(start // n, (stop - 1) // n + 1):
            out.append((home, min(stop, (home + 1) * n) - max(start, home * n)))
        return out

    def traffic(self, shape: AttentionShape | None = None) -> Traffic:
        """The bytes one attention layer of ``shape`` (default: the plan's) moves under this plan (see
        :class:`Traffic`); for the shape of its rows (:class:`AttentionShape`) exactly what
        :func:`attnzoo.distributed.core_attention` sends."""
        shape = self.shape if shape is None else shape
        per_rank = [0] * self.world_size
        q_tokens = kv_tokens = 0
        q_cost = shape.q_bytes + shape.out_bytes
        for task in self.tasks:
            base = self.doc_offsets[task.doc]
            for home, count in self._homes(base + task.start, base + task.stop):
                if home != task.rank:
                    q_tokens += count
                    per_rank[home] += count * q_cost
                    per_rank[task.rank] += count * q_cost
        for rank in range(self.world_size):
            for doc, stop in self.kv_prefixes(rank).items():
                base = self.doc_offsets[doc]
                for home, count in self._homes(base, base + stop):
                    if home != rank:
                        kv_tokens += count
                        per_rank[home] += count * shape.kv_bytes
                        per_rank[rank] += count * shape.kv_bytes
        return Traffic(
            q_tokens=q_tokens,
            kv_tokens=kv_tokens,
            forward_bytes=q_tokens * q_cost + kv_tokens * shape.kv_bytes,
            backward_bytes=q_tokens * 2 * shape.q_bytes + kv_tokens * shape.kv_bytes,
            max_rank_bytes=max(per_rank),
        )

    def fingerprint(self) -> int:
        """A checksum of the layout and the tasks, equal on ranks that hold the same plan."""
        text = f"{self.world_size};{self.doc_lengths};" + ";".join(
            f"{t.doc},{t.start},{t.stop},{t.rank}" for t in self.tasks
        )
        return zlib.crc32(text.encode())
