"""DisaggregatedAttention scenarios (spawned gloo processes, float64): for every planner and both
ways of naming the documents (doc_lengths, cu_seqlens), the module's outputs, log-sum-exps and
gradients equal single-process causal attention within each packed document; plans are cached
per layout; a bad layout on any rank, or layouts that differ across ranks, raise on every rank."""

from __future__ import annotations

import torch
from tests.distributed._workers import _close, _full, _leaf, _raises
from tests.distributed._workers_core import DV, D, H, documents, reference

from attnzoo.distributed import DisaggregatedAttention


def _check(
    rank: int, world: int, attn: DisaggregatedAttention, lengths: list[int], seed: int, cu: bool
) -> None:
    total = sum(lengths)
    n = total // world
    q, k, v = (
        _full(H, total, D, seed=seed),
        _full(H, total, D, seed=seed + 1),
        _full(H, total, DV, seed=seed + 2),
    )
    w = _full(H, total, DV, seed=seed + 3)
    ref_in = [_leaf(t) for t in (q, k, v)]
    ref, ref_lse = reference(*ref_in, lengths, attn.scale)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_in)
    rows = slice(rank * n, (rank + 1) * n)
    local = [_leaf(t[:, rows]) for t in (q, k, v)]
    if cu:
        bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        out, lse = attn(*local, cu_seqlens=bounds)
    else:
        out, lse = attn(*local, lengths)
    (out * w[:, rows]).sum().backward()
    tag = f"rank {rank}/{world} {attn.planner} cu_seqlens={cu}"
    _close(out, ref[:, rows].detach(), f"{tag} out")
    _close(lse, ref_lse[:, rows].detach(), f"{tag} lse")
    for name, t, g in zip("qkv", local, ref_grads):
        _close(t.grad, g[:, rows], f"{tag} d{name}")


def module(rank: int, world: int) -> None:
    lengths = documents(world, seed=11 + world)
    for seed, (planner, scale, cu) in enumerate(
        [("distca", None, False), ("distca", 0.6, True), ("per_document", None, True), ("local", 1.2, False)]
    ):
        attn = DisaggregatedAttention(planner=planner, tolerance=0.0, min_chunk=2, scale=scale)
        _check(rank, world, attn, lengths, 10 * seed, cu)
    # the planner of a module is plan_core_attention's; plans are cached per layout
    attn = DisaggregatedAttention(tolerance=0.0, min_chunk=2, cache_size=1)
    _check(rank, world, attn, lengths, 60, False)
    (plan,) = attn._plans.values()
    assert plan.method == "distca" and plan.traffic().q_tokens > 0, plan
    _check(rank, world, attn, lengths, 70, True)
    assert list(attn._plans.values()) == [plan]  # the same layout: no new plan
    other = documents(world, seed=99)
    _check(rank, world, attn, other, 80, False)
    assert len(attn._plans) == 1 and next(iter(attn._plans))[0] == tuple(other)


def module_errors(rank: int, world: int) -> None:
    lengths = documents(world, seed=5)
    n = sum(lengths) // world
    x = _full(H, n, D, seed=0)
    attn = DisaggregatedAttention(min_chunk=2)
    _raises(TypeError, r"exactly one of doc_lengths and cu_seqlens", lambda: attn(x, x, x))
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    _raises(TypeError, r"exactly one of", lambda: attn(x, x, x, lengths, cu_seqlens=bounds))
    _raises(ValueError, r"cu_seqlens must start at 0", lambda: attn(x, x, x, cu_seqlens=bounds[1:]))
    _raises(
        TypeError, r"cu_seqlens must be an integer tensor", lambda: attn(x, x, x, cu_seqlens=bounds.double())
    )
    flat = bounds.clone()
    flat[2] = flat[1]
    _raises(ValueError, r"cu_seqlens must be strictly increasing", lambda: attn(x, x, x, cu_seqlens=flat))
    _raises(ValueError, r"doc_lengths sum to", lambda: attn(x, x, x, [*lengths, 1]))
    # only rank 1 names other documents (same total): every rank raises, naming the layout
    mine = [lengths[0] + lengths[1], *lengths[2:]] if rank == 1 else lengths
    _raises(
        ValueError, r"plan checksum \(doc_lengths / cu_seqlens\) must be equal", lambda: attn(x, x, x, mine)
    )
    # only rank 0 passes a bad layout: it names the argument, the others name rank 0
    bad = "ab" if rank == 0 else lengths
    if rank == 0:
        _raises(TypeError, r"doc_lengths must be a sequence of ints", lambda: attn(x, x, x, bad))
    else:
        _raises(ValueError, r"invalid input on rank\(s\) \[0\]", lambda: attn(x, x, x, bad))
    out, lse = attn(x, x, x, torch.tensor(lengths))
    assert out.shape == x.shape and lse.shape == (H, n)


SCENARIOS = {"module": module, "module_errors": module_errors}
