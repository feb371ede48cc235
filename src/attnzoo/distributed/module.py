"""A module for core attention disaggregation: plan the packed documents, run the executor.

:class:`DisaggregatedAttention` is the user-facing form of :func:`plan_core_attention` (DistCA's
planner, or a baseline placement) and :func:`core_attention` (the executor): every rank of a
``torch.distributed`` process group holds its contiguous shard of one packed token stream and the
same document boundaries (``doc_lengths``, or ``cu_seqlens`` as in variable-length attention
kernels); the module plans where every piece of core attention runs (plans are cached per document
layout), ships the q/k/v rows there, computes, and returns each rank's output rows and their
log-sum-exp. The backward pass runs through the same placement.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.distributed as dist
from torch import nn

from attnzoo.checks import check_float, check_int, check_tensor
from attnzoo.distributed._comm import agree, group_info
from attnzoo.distributed._plan import AttentionShape, CoreAttentionPlan
from attnzoo.distributed.executor import core_attention
from attnzoo.distributed.planner import _check_layout, plan_core_attention, plan_local, plan_per_document

__all__ = ["DisaggregatedAttention"]

PLANNERS = ("distca", "per_document", "local")


def _lengths(doc_lengths: object, cu_seqlens: object) -> tuple[int, ...]:
    """Document lengths from exactly one of ``doc_lengths`` (ints or a 1-D integer tensor) and
    ``cu_seqlens`` (1-D integer tensor ``[0, l_0, l_0 + l_1, ..., T]``)."""
    if (doc_lengths is None) == (cu_seqlens is None):
        raise TypeError("pass exactly one of doc_lengths and cu_seqlens")
    if cu_seqlens is not None:
        check_tensor(cu_seqlens, "cu_seqlens", ndim=1, floating=False, finite=False)
        if cu_seqlens.is_floating_point() or cu_seqlens.is_complex() or cu_seqlens.dtype == torch.bool:
            raise TypeError(f"cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}")
        bounds = [int(b) for b in cu_seqlens.tolist()]
        if len(bounds) < 2 or bounds[0] != 0:
            raise ValueError(f"cu_seqlens must start at 0 and name at least one document, got {bounds[:8]}")
        lengths = [b - a for a, b in pairwise(bounds)]
        if min(lengths) <= 0:
            raise ValueError("cu_seqlens must be strictly increasing (every document has >= 1 token)")
        return tuple(lengths)
    if isinstance(doc_lengths, torch.Tensor):
        check_tensor(doc_lengths, "doc_lengths", ndim=1, floating=False, finite=False)
        if doc_lengths.is_floating_point() or doc_lengths.dtype == torch.bool:
            raise TypeError(f"doc_lengths must be an integer tensor, got {doc_lengths.dtype}")
        return tuple(int(n) for n in doc_lengths.tolist())
    if isinstance(doc_lengths, (str, bytes)) or not isinstance(doc_lengths, Sequence):
        raise TypeError(f"doc_lengths must be a sequence of ints, got {type(doc_lengths).__name__}")
    return tuple(doc_lengths)


class DisaggregatedAttention(nn.Module):
    """Causal attention within each packed document, computed by core attention disaggregation.

    Every rank of ``group`` calls the module with its home shard of the packed stream (rank ``r``
    of ``W`` holds tokens ``[r T / W, (r + 1) T / W)``) and the same document layout; it returns,
    for its tokens, exactly what single-process variable-length causal attention over the whole
    stream gives (each token attends to the earlier tokens of its own document), computed on the
    ranks the planner chose. Gradients reach ``q``, ``k`` and ``v`` (those of the sum of the
    per-rank losses; every rank must run the backward). No parameters.

    Args:
        planner: ``"distca"`` (:func:`plan_core_attention`: split documents into token-level
            tasks, balance query-key pairs within ``tolerance``, fewest bytes moved),
            ``"per_document"`` (:func:`plan_per_document`) or ``"local"`` (:func:`plan_local`).
        tolerance: the DistCA planner's load-imbalance target (busiest rank at most
            ``1 + tolerance`` times the mean).
        min_chunk: fewest queries in a piece the DistCA planner splits off.
        scale: score scale; ``d ** -0.5`` when ``None``.
        group: the process group (default: the world); ``gloo`` with CPU tensors, ``nccl`` with
            CUDA tensors (one device per rank).
        cache_size: document layouts whose plans are kept (least recently used dropped).

    Shapes: ``q, k: (h, n, d)``, ``v: (h, n, d_v)`` with ``n = T / W``; returns
    ``(out (h, n, d_v), lse (h, n))`` (``lse`` is not differentiable). A bad input on any rank,
    or document layouts that differ across ranks, raises on every rank; a rank that dies or hangs
    makes the others raise :class:`~attnzoo.distributed.RankFailure` within the group's timeout.

    Example (on each of ``W`` ranks)::

        attn = DisaggregatedAttention(tolerance=0.1)
        cu = torch.tensor([0, 3000, 3100, 8192])          # three documents, T = 8192 tokens
        out, lse = attn(q_local, k_local, v_local, cu_seqlens=cu)   # q_local: (h, 8192 / W, d)
    """

    def __init__(
        self,
        *,
        planner: str = "distca",
        tolerance: float = 0.1,
        min_chunk: int = 128,
        scale: float | None = None,
        group: dist.ProcessGroup | None = None,
        cache_size: int = 16,
    ) -> None:
        super().__init__()
        if planner not in PLANNERS:
            raise ValueError(f"planner must be one of {PLANNERS}, got {planner!r}")
        if scale is not None:
            scale = check_float(scale, "scale", positive=True)
        self.planner = planner
        self.tolerance = check_float(tolerance, "tolerance", minimum=0.0)
        self.min_chunk = check_int(min_chunk, "min_chunk")
        self.scale = scale
        self.group = group
        self.cache_size = check_int(cache_size, "cache_size")
        self._plans: OrderedDict[tuple, CoreAttentionPlan] = OrderedDict()

    def extra_repr(self) -> str:
        return f"planner={self.planner!r}, tolerance={self.tolerance}, min_chunk={self.min_chunk}"

    def plan(
        self, doc_lengths: Sequence[int], world_size: int, shape: AttentionShape | None = None
    ) -> CoreAttentionPlan:
        """The (cached) plan of ``doc_lengths`` over ``world_size`` ranks; ``shape`` (default:
        :class:`AttentionShape`'s) prices the bytes the DistCA planner minimises."""
        shape = AttentionShape() if shape is None else shape
        lengths, world_size = _check_layout(doc_lengths, world_size)
        key = (lengths, world_size, shape)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        if self.planner == "distca":
            plan = plan_core_attention(
                lengths, world_size, tolerance=self.tolerance, min_chunk=self.min_chunk, shape=shape
            )
        else:
            baseline = plan_local if self.planner == "local" else plan_per_document
            plan = baseline(lengths, world_size, shape=shape)
        self._plans[key] = plan
        while len(self._plans) > self.cache_size:
            self._plans.popitem(last=False)
        return plan

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        doc_lengths: Sequence[int] | torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q, k: (h, n, d)``, ``v: (h, n, d_v)`` (this rank's shard); exactly one of
        ``doc_lengths`` (the documents' token counts in stream order) and ``cu_seqlens`` (their
        cumulative offsets from 0 to ``T``), equal on every rank. Returns ``(out, lse)``."""
        check_tensor(q, "q", floating=False, nonempty=False, finite=False)  # its device carries the checks
        group, _, world = group_info(self.group)
        plan: CoreAttentionPlan | None = None

        def check() -> list[int]:
            nonlocal plan
            lengths = _lengths(doc_lengths, cu_seqlens)
            check_tensor(q, "q", ndim=3, finite=False)
            size = torch.promote_types(q.dtype, torch.float32).itemsize
            heads, dim = q.shape[0], q.shape[-1]
            plan = self.plan(lengths, world, AttentionShape(heads, heads, dim, size, size))
            return [plan.fingerprint()]

        agree(check, ["plan checksum (doc_lengths / cu_seqlens)"], group=group, device=q.device)
        assert plan is not None  # agree raised otherwise
        return core_attention(q, k, v, plan, scale=self.scale, group=group)
