"""Sequence parallelism and core attention disaggregation: inputs too long for one device are split
along the sequence across the ranks of a ``torch.distributed`` process group, and attnzoo still
computes the exact same function.

* :func:`ring_attention`: softmax attention (optionally causal); key/value shards travel around
  the ring, partial results merge by log-sum-exp, and the backward pass is a second ring pass.
* :func:`ulysses_attention`: softmax attention by two all-to-alls (DeepSpeed Ulysses): sequence
  shards become head groups over the full sequence and back; the head count must divide.
* :func:`sequence_parallel_linear_attention`: causal (gated) linear attention; an exclusive prefix
  of per-shard states across ranks gives each shard its incoming state.
* :class:`DisaggregatedAttention` (DistCA's core attention disaggregation): causal attention
  within packed documents, planned by :func:`plan_core_attention` (documents split into
  token-level tasks balanced over attention ranks; :func:`plan_local` and
  :func:`plan_per_document` are the baselines) and run by the executor :func:`core_attention`;
  ``python -m attnzoo.distributed.report`` measures planners (simulated, 8-512 ranks) and
  executor (gloo).
* :func:`shard_sequence` / :func:`gather_sequence`: split a replicated tensor into equal contiguous
  shards and concatenate shards back, both differentiable.

Every rank calls the same function on its own shard (rank ``r`` holds the ``r``-th contiguous
slice). Gradients are those of the *sum* of the per-rank losses, and every rank must take part in
the backward pass (it communicates). Shapes, dtypes and flags are checked across ranks: a bad
input on any rank raises on every rank instead of leaving the others waiting. A rank that dies or
hangs makes the others raise :class:`RankFailure` within the process group's timeout (set it with
``init_process_group(timeout=...)``, ``new_group(timeout=...)`` or ``torch.distributed.set_timeout``).
Only generic collectives and point-to-point calls are used, so the same code runs with ``gloo`` on
CPUs and ``nccl`` on GPUs.

Example, on each of ``W`` processes (e.g. ``torchrun --nproc-per-node W script.py``)::

    import torch, torch.distributed as dist
    from attnzoo.distributed import gather_sequence, ring_attention, shard_sequence

    dist.init_process_group("gloo")                      # "nccl" on GPUs
    torch.manual_seed(0)                                 # same full tensors on every rank
    q, k, v = (torch.randn(1, 4, 1024, 32) for _ in range(3))  # N = 1024: W must divide it
    out = ring_attention(*(shard_sequence(t, dim=2) for t in (q, k, v)), causal=True)
    full = gather_sequence(out, dim=2)                   # == attnzoo.kernels.attention(q, k, v, causal=True)
"""

from attnzoo.distributed._comm import RankFailure
from attnzoo.distributed.executor import core_attention
from attnzoo.distributed.linear import sequence_parallel_linear_attention
from attnzoo.distributed.module import DisaggregatedAttention
from attnzoo.distributed.planner import (
    AttentionShape,
    CoreAttentionPlan,
    CoreAttentionTask,
    Traffic,
    plan_core_attention,
    plan_local,
    plan_per_document,
)
from attnzoo.distributed.ring import ring_attention
from attnzoo.distributed.sequence import gather_sequence, shard_sequence
from attnzoo.distributed.ulysses import ulysses_attention

__all__ = [
    "AttentionShape",
    "CoreAttentionPlan",
    "CoreAttentionTask",
    "DisaggregatedAttention",
    "RankFailure",
    "Traffic",
    "core_attention",
    "gather_sequence",
    "plan_core_attention",
    "plan_local",
    "plan_per_document",
    "ring_attention",
    "sequence_parallel_linear_attention",
    "shard_sequence",
    "ulysses_attention",
]
