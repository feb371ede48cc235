"""Core attention disaggregation scenarios (spawned gloo processes, float64): for the local, the
per-document and the DistCA plan, core_attention's outputs, log-sum-exps and gradients equal
single-process causal attention within each packed document; bad plans and shapes raise on every
rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
from tests.distributed._workers import _close, _full, _leaf, _raises

from attnzoo.distributed import (
    CoreAttentionPlan,
    core_attention,
    plan_core_attention,
    plan_local,
    plan_per_document,
)
from attnzoo.distributed import executor as core_module
from attnzoo.distributed._comm import count_sent_bytes
from attnzoo.kernels import attention

H, D, DV, N_LOCAL = 2, 4, 3, 24


def documents(world: int, seed: int) -> list[int]:
    """Lengths of 1..40 tokens summing to ``world * N_LOCAL`` (documents straddle shard borders)."""
    gen = torch.Generator().manual_seed(seed)
    lengths, left = [], world * N_LOCAL
    while left:
        length = min(int(torch.randint(1, 41, (1,), generator=gen)), left)
        lengths.append(length)
        left -= length
    return lengths


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int], scale: float | None):
    """Causal attention within each document of the packed ``(h, T, d)`` stream, and its lse."""
    outs, lses, start = [], [], 0
    for length in lengths:
        qd, kd, vd = (t[:, start : start + length] for t in (q, k, v))
        outs.append(attention(qd, kd, vd, causal=True, scale=scale))
        s = (qd @ kd.transpose(-2, -1)) * (qd.shape[-1] ** -0.5 if scale is None else scale)
        s = s.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
        lses.append(torch.logsumexp(s, dim=-1))
        start += length
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def _run_plan(rank: int, plan: CoreAttentionPlan, scale: float | None, seed: int) -> None:
    total, n = sum(plan.doc_lengths), plan.tokens_per_rank
    q, k, v = (
        _full(H, total, D, seed=seed),
        _full(H, total, D, seed=seed + 1),
        _full(H, total, DV, seed=seed + 2),
    )
    w = _full(H, total, DV, seed=seed + 3)
    ref_in = [_leaf(t) for t in (q, k, v)]
    ref, ref_lse = reference(*ref_in, list(plan.doc_lengths), scale)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_in)
    rows = slice(rank * n, (rank + 1) * n)
    local = [_leaf(t[:, rows]) for t in (q, k, v)]
    with count_sent_bytes() as meter:
        out, lse = core_attention(*local, plan, scale=scale)
        forward = meter.bytes
        (out * w[:, rows]).sum().backward()
    tag = f"rank {rank}/{plan.world_size} {plan.method} scale={scale}"
    # every rank's payload, summed, is what the plan's Traffic counts for float64 rows (d_v != d here)
    sent = torch.tensor([forward, meter.bytes], dtype=torch.int64)
    dist.all_reduce(sent)
    traffic, e = plan.traffic(), 8
    q_row, out_row, kv_row = H * D * e, H * (DV + 1) * e, H * (D + DV) * e
    fwd = traffic.q_tokens * (q_row + out_row) + traffic.kv_tokens * kv_row
    bwd = traffic.q_tokens * (H * DV * e + q_row) + traffic.kv_tokens * kv_row
    assert sent.tolist() == [fwd, fwd + bwd], (tag, sent.tolist(), fwd, bwd)
    _close(out, ref[:, rows].detach(), f"{tag} out")
    _close(lse, ref_lse[:, rows].detach(), f"{tag} lse")
    assert not lse.requires_grad
    for name, t, g in zip("qkv", local, ref_grads):
        _close(t.grad, g[:, rows], f"{tag} d{name}")


def core(rank: int, world: int) -> None:
    lengths = documents(world, seed=world)
    distca = plan_core_attention(lengths, world, tolerance=0.0, min_chunk=2)
    # the DistCA plan must really disaggregate: a document split over ranks, work away from home
    homes = {(t.doc, t.start) for t in plan_local(lengths, world).tasks}
    assert any((t.doc, t.start) not in homes for t in distca.tasks), distca.tasks
    assert distca.traffic().q_tokens > 0 and distca.imbalance < plan_local(lengths, world).imbalance
    for seed, (plan, scale) in enumerate(
        [(plan_local(lengths, world), None), (plan_per_document(lengths, world), 0.7), (distca, None)]
    ):
        _run_plan(rank, plan, scale, seed=10 * seed)
    original = core_module.QUERY_BLOCK
    core_module.QUERY_BLOCK = 3  # several query blocks per task
    try:
        _run_plan(rank, distca, 1.3, seed=50)
    finally:
        core_module.QUERY_BLOCK = original


def core_low_precision(rank: int, world: int) -> None:
    """float32 in, float32 out; a rank with no task still answers (an all-on-rank-0 plan)."""
    lengths = documents(world, seed=7)
    plan = plan_per_document(lengths, world)
    lonely = CoreAttentionPlan(
        plan.doc_lengths, world, tuple(t.__class__(t.doc, 0, t.stop, 0) for t in plan.tasks), "all_on_0"
    )
    for p in (plan, lonely):
        total, n = sum(lengths), p.tokens_per_rank
        q, k, v = _full(H, total, D, seed=1), _full(H, total, D, seed=2), _full(H, total, DV, seed=3)
        ref, _ = reference(q, k, v, lengths, None)
        rows = slice(rank * n, (rank + 1) * n)
        out, _ = core_attention(*(t[:, rows].float() for t in (q, k, v)), p)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref[:, rows], atol=1e-5, rtol=1e-5)


def core_errors(rank: int, world: int) -> None:
    lengths = documents(world, seed=3)
    plan = plan_core_attention(lengths, world, min_chunk=2)
    n = plan.tokens_per_rank
    x = _full(H, n, D, seed=0)
    other = plan_local(lengths, world) if rank == 1 else plan
    _raises(ValueError, r"plan checksum must be equal on every rank", lambda: core_attention(x, x, x, other))
    wrong = plan_local([(world + 1) * n], world + 1)
    if rank == 0:
        _raises(ValueError, rf"plan is for {world + 1} ranks", lambda: core_attention(x, x, x, wrong))
    else:
        _raises(ValueError, r"invalid input on rank\(s\) \[0\]", lambda: core_attention(x, x, x, plan))
    short = _full(H, n - 1, D, seed=0)
    _raises(ValueError, rf"q holds {n - 1} tokens", lambda: core_attention(short, short, short, plan))
    _raises(
        TypeError,
        r"plan must be an attnzoo.distributed.CoreAttentionPlan",
        lambda: core_attention(x, x, x, lengths),
    )
    out, lse = core_attention(x, x, x, plan)
    assert out.shape == x.shape and lse.shape == (H, n)


SCENARIOS = {"core": core, "core_low_precision": core_low_precision, "core_errors": core_errors}
WORLDS = {"core": (2, 3, 4), "core_low_precision": (2, 3), "core_errors": (2, 3)}
