"""Ring, linear and shard/gather scenarios of the sequence-parallel tests, run in spawned processes
(gloo, float64; tests/distributed/_harness.py runs them).

Every rank builds the same full tensors from a fixed seed, computes the single-process reference
itself, runs the distributed path on its shard and asserts that its outputs and gradients equal
its slice of the reference. A failed assertion in any rank fails the spawning test.

Losses: rank ``r`` uses ``sum(out_r * w_r)`` with ``w_r`` its slice of a full random weight ``w``,
so the sum of the per-rank losses is the single-process loss ``sum(out * w)``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import pytest
import torch
import torch.distributed as dist

from attnzoo.distributed import (
    gather_sequence,
    ring_attention,
    sequence_parallel_linear_attention,
    shard_sequence,
)
from attnzoo.distributed import ring as ring_module
from attnzoo.kernels import attention
from attnzoo.kernels.linear import linear_attention_recurrent

B, H, N_LOCAL, DK, DV = 2, 2, 3, 4, 5
F64 = torch.float64


def _full(*dims: int, seed: int) -> torch.Tensor:
    return torch.randn(*dims, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _slice(x: torch.Tensor, rank: int, n: int = N_LOCAL, dim: int = 2) -> torch.Tensor:
    return x.narrow(dim, rank * n, n)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------- ring attention


def _ring_case(rank: int, world: int, causal: bool, scale: float | None, seed: int) -> None:
    n = N_LOCAL * world
    q, k, v = (
        _full(B, H, n, DK, seed=seed),
        _full(B, H, n, DK, seed=seed + 1),
        _full(B, H, n, DV, seed=seed + 2),
    )
    w = _full(B, H, n, DV, seed=seed + 3)
    ref_in = [_leaf(t) for t in (q, k, v)]
    ref = attention(*ref_in, causal=causal, scale=scale)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_in)

    local = [_leaf(_slice(t, rank)) for t in (q, k, v)]
    out = ring_attention(*local, causal=causal, scale=scale)
    (out * _slice(w, rank)).sum().backward()
    tag = f"rank {rank}/{world} causal={causal} scale={scale}"
    _close(out, _slice(ref, rank).detach(), f"{tag} out")
    for name, t, g in zip("qkv", local, ref_grads):
        _close(t.grad, _slice(g, rank), f"{tag} d{name}")


def ring(rank: int, world: int) -> None:
    for seed, (causal, scale) in enumerate([(False, None), (True, None), (True, 0.3), (False, 1.7)]):
        _ring_case(rank, world, causal, scale, seed=10 * seed)


def ring_end_to_end(rank: int, world: int) -> None:
    """Replicated full inputs -> shard_sequence -> ring_attention -> gather_sequence, and a different
    loss weight per rank: every rank's input gradient is the full gradient of the summed loss."""
    n = N_LOCAL * world
    q, k, v = _full(B, H, n, DK, seed=1), _full(B, H, n, DK, seed=2), _full(B, H, n, DV, seed=3)
    weights = [_full(B, H, n, DV, seed=100 + r) for r in range(world)]
    ref_in = [_leaf(t) for t in (q, k, v)]
    ref = attention(*ref_in, causal=True)
    ref_grads = torch.autograd.grad((ref * sum(weights)).sum(), ref_in)

    full_in = [_leaf(t) for t in (q, k, v)]
    out = gather_sequence(ring_attention(*(shard_sequence(t, dim=2) for t in full_in), causal=True), dim=2)
    (out * weights[rank]).sum().backward()
    _close(out, ref.detach(), f"rank {rank} gathered out")
    for name, t, g in zip("qkv", full_in, ref_grads):
        _close(t.grad, g, f"rank {rank} d{name} (replicated input)")


def ring_low_precision(rank: int, world: int) -> None:
    """float32 and bfloat16 shards: output dtype follows q, values match the float64 reference."""
    n = N_LOCAL * world
    q, k, v = _full(B, H, n, DK, seed=5), _full(B, H, n, DK, seed=6), _full(B, H, n, DV, seed=7)
    ref = attention(q, k, v, causal=True)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        local = [_leaf(_slice(t, rank).to(dtype)) for t in (q, k, v)]
        out = ring_attention(*local, causal=True)
        out.sum().backward()
        assert out.dtype == dtype and all(t.grad.dtype == dtype for t in local)
        ref_low = attention(*(t.to(dtype).to(F64) for t in (q, k, v)), causal=True)
        torch.testing.assert_close(out.to(F64), _slice(ref_low, rank), atol=tol, rtol=tol)
        assert torch.isfinite(out).all() and ref.shape[2] == n


def ring_subgroups(rank: int, world: int) -> None:
    """A group that is not the world: singleton groups (no communication), and for 3 ranks the group
    of ranks 1 and 2 (its ring peers are global ranks 1 <-> 2)."""
    singletons = [dist.new_group([r]) for r in range(world)]
    q, k, v = (
        _full(B, H, 4, DK, seed=rank),
        _full(B, H, 4, DK, seed=rank + 7),
        _full(B, H, 4, DV, seed=rank + 9),
    )
    local = [_leaf(t) for t in (q, k, v)]
    out = ring_attention(*local, causal=True, group=singletons[rank])
    out.sum().backward()
    ref_in = [_leaf(t) for t in (q, k, v)]
    ref = attention(*ref_in, causal=True)
    for t, g in zip(local, torch.autograd.grad(ref.sum(), ref_in)):
        _close(t.grad, g, f"rank {rank} singleton-group grad")
    _close(out, ref.detach(), f"rank {rank} singleton-group out")
    if world < 3:
        return
    pair = dist.new_group([1, 2])
    if rank == 0:
        return
    sub_rank = rank - 1
    q, k, v = (
        _full(B, H, 2 * N_LOCAL, DK, seed=40),
        _full(B, H, 2 * N_LOCAL, DK, seed=41),
        _full(B, H, 6, DV, seed=42),
    )
    ref_in = [_leaf(t) for t in (q, k, v)]
    ref = attention(*ref_in, causal=False)
    ref_grads = torch.autograd.grad(ref.sum(), ref_in)
    local = [_leaf(_slice(t, sub_rank)) for t in (q, k, v)]
    out = ring_attention(*local, group=pair)
    out.sum().backward()
    _close(out, _slice(ref, sub_rank).detach(), f"rank {rank} pair-group out")
    for t, g in zip(local, ref_grads):
        _close(t.grad, _slice(g, sub_rank), f"rank {rank} pair-group grad")


def ring_structure(rank: int, world: int) -> None:
    """Structural facts, forward and backward: every score block is (n, n) with n the shard length
    (no rank forms scores against more than one shard), causal ranks skip later shards (rank r
    computes r + 1 blocks), and at most two travelling key/value shards are alive at any time
    (the one in use and the one arriving), besides the rank's own."""
    n = N_LOCAL * world
    q, k, v = _full(B, H, n, DK, seed=1), _full(B, H, n, DK, seed=2), _full(B, H, n, DV, seed=3)
    blocks: list[tuple[str, tuple[int, ...]]] = []
    alive_at_send: list[int] = []
    received: list[weakref.ref[torch.Tensor]] = []

    def counting(fn: Callable[..., object], kind: str) -> Callable[..., object]:
        def wrapped(q_: torch.Tensor, k_: torch.Tensor, *args: object, **kwargs: object) -> object:
            blocks.append((kind, (q_.shape[-2], k_.shape[-2])))
            return fn(q_, k_, *args, **kwargs)

        return wrapped

    def tracking_shift(tensors: Sequence[torch.Tensor], group: object, *, tag: int = 0) -> object:
        if tag == ring_module._KV_TAG:
            alive_at_send.append(sum(ref() is not None for ref in received))
        recvs, works = original_shift(tensors, group, tag=tag)
        if tag == ring_module._KV_TAG:
            received.extend(weakref.ref(t) for t in recvs)
        return recvs, works

    original_shift = ring_module.ring_shift
    original_fwd, original_bwd = ring_module.attention_with_lse, ring_module.attention_block_grad
    ring_module.ring_shift = tracking_shift
    ring_module.attention_with_lse = counting(original_fwd, "forward")
    ring_module.attention_block_grad = counting(original_bwd, "backward")
    try:
        for causal in (False, True):
            blocks.clear()
            local = [_leaf(_slice(t, rank)) for t in (q, k, v)]
            ring_attention(*local, causal=causal).sum().backward()
            expected = rank + 1 if causal else world
            for kind in ("forward", "backward"):
                shapes = [shape for name, shape in blocks if name == kind]
                assert len(shapes) == expected, (kind, causal, shapes)
                assert set(shapes) == {(N_LOCAL, N_LOCAL)}, (kind, shapes)
        assert alive_at_send and max(alive_at_send) <= 2, alive_at_send  # (k, v) of one block
    finally:
        ring_module.ring_shift = original_shift
        ring_module.attention_with_lse, ring_module.attention_block_grad = original_fwd, original_bwd


# --------------------------------------------------------------------------- linear attention


def _gate(kind: str, n: int, seed: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "per_head":
        return -torch.rand(H, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=F64)
    width = 1 if kind == "scalar" else DK
    return torch.nn.functional.logsigmoid(_full(B, H, n, width, seed=seed) + 2)


def _linear_case(rank: int, world: int, gate_kind: str, with_state: bool, seed: int) -> None:
    n = N_LOCAL * world
    q, k, v = (
        _full(B, H, n, DK, seed=seed),
        _full(B, H, n, DK, seed=seed + 1),
        _full(B, H, n, DV, seed=seed + 2),
    )
    gate = _gate(gate_kind, n, seed + 3)
    state0 = _full(B, H, DK, DV, seed=seed + 4) if with_state else None
    w = _full(B, H, n, DV, seed=seed + 5)
    w_state = _full(B, H, DK, DV, seed=seed + 6)
    scale = 0.8

    def loss_terms(o: torch.Tensor, s: torch.Tensor, o_weight: torch.Tensor, last: bool) -> torch.Tensor:
        return (o * o_weight).sum() + ((s * w_state).sum() if last else 0.0)

    ref_in = {"q": _leaf(q), "k": _leaf(k), "v": _leaf(v)}
    if gate is not None:
        ref_in["log_gate"] = _leaf(gate)
    if state0 is not None:
        ref_in["initial_state"] = _leaf(state0)
    ref_o, ref_s = linear_attention_recurrent(
        ref_in["q"],
        ref_in["k"],
        ref_in["v"],
        log_gate=ref_in.get("log_gate"),
        initial_state=ref_in.get("initial_state"),
        scale=scale,
    )
    ref_grads = dict(
        zip(ref_in, torch.autograd.grad(loss_terms(ref_o, ref_s, w, True), list(ref_in.values())))
    )

    per_token = gate is not None and gate_kind != "per_head"
    local = {"q": _leaf(_slice(q, rank)), "k": _leaf(_slice(k, rank)), "v": _leaf(_slice(v, rank))}
    if gate is not None:
        local["log_gate"] = _leaf(_slice(gate, rank) if per_token else gate)
    if state0 is not None:
        local["initial_state"] = _leaf(state0)
    o, s = sequence_parallel_linear_attention(
        local["q"],
        local["k"],
        local["v"],
        log_gate=local.get("log_gate"),
        initial_state=local.get("initial_state"),
        scale=scale,
        chunk_size=2,
    )
    loss_terms(o, s, _slice(w, rank), rank == world - 1).backward()
    tag = f"rank {rank}/{world} gate={gate_kind} state={with_state}"
    _close(o, _slice(ref_o, rank).detach(), f"{tag} out")
    prefix_state = linear_attention_recurrent(
        q[:, :, : (rank + 1) * N_LOCAL],
        k[:, :, : (rank + 1) * N_LOCAL],
        v[:, :, : (rank + 1) * N_LOCAL],
        log_gate=gate if not per_token else gate[:, :, : (rank + 1) * N_LOCAL],
        initial_state=state0,
        scale=scale,
    )[1]
    _close(s, prefix_state, f"{tag} state after this shard")
    if rank == world - 1:
        _close(s, ref_s.detach(), f"{tag} final state")
    for name in ("q", "k", "v"):
        _close(local[name].grad, _slice(ref_grads[name], rank), f"{tag} d{name}")
    if gate is not None:
        grad = local["log_gate"].grad
        if per_token:
            _close(grad, _slice(ref_grads["log_gate"], rank), f"{tag} dlog_gate")
        else:  # a gate shared by every shard is a replicated parameter: its shares sum to the gradient
            dist.all_reduce(grad)
            _close(grad, ref_grads["log_gate"], f"{tag} dlog_gate (summed over ranks)")
    if state0 is not None:
        _close(local["initial_state"].grad, ref_grads["initial_state"], f"{tag} dinitial_state")


def linear(rank: int, world: int) -> None:
    cases = [("none", False), ("none", True), ("scalar", False), ("per_key", True), ("per_head", True)]
    for seed, (gate_kind, with_state) in enumerate(cases):
        _linear_case(rank, world, gate_kind, with_state, seed=20 * seed)


# --------------------------------------------------------------------------- helpers and errors


def helpers(rank: int, world: int) -> None:
    """shard/gather round trip along other dims and their gradient conventions."""
    x = _leaf(_full(2, 3 * world, 4, seed=3))
    shard = shard_sequence(x, dim=1)
    _close(shard, x.detach()[:, 3 * rank : 3 * rank + 3], f"rank {rank} shard")
    back = gather_sequence(shard, dim=-2)
    _close(back, x.detach(), f"rank {rank} gather")
    weights = [_full(2, 3 * world, 4, seed=50 + r) for r in range(world)]
    (back * weights[rank]).sum().backward()
    _close(x.grad, sum(weights), f"rank {rank} replicated gradient through shard+gather")

    y = _leaf(_full(2, 2, 5, seed=60 + rank))
    gathered = gather_sequence(y, dim=2)
    assert gathered.shape == (2, 2, 5 * world)
    (gathered * torch.arange(5 * world, dtype=F64)).sum().backward()
    _close(y.grad, world * torch.arange(5 * rank, 5 * rank + 5, dtype=F64).expand(2, 2, 5), "gather grad")


def _raises(kind: type[Exception], match: str, fn: Callable[[], object]) -> None:
    with pytest.raises(kind, match=match):
        fn()


def errors(rank: int, world: int) -> None:
    """Bad inputs raise on every rank (no rank is left waiting), and the group stays usable. Rank 1
    holds the bad shard or argument."""
    q = _full(1, 2, 3 + (rank == 1), 4, seed=0)
    _raises(ValueError, r"shard length must be equal on every rank", lambda: ring_attention(q, q, q))
    _raises(
        ValueError,
        r"shard length must be equal on every rank",
        lambda: sequence_parallel_linear_attention(q, q, q),
    )
    _raises(ValueError, r"size of dimension 2 must be equal", lambda: gather_sequence(q, dim=2))

    q = _full(1, 2, 3, 4, seed=0)
    bad_k = q[..., :3] if rank == 1 else q
    if rank == 1:
        _raises(ValueError, r"k has size 3 on dimension 3", lambda: ring_attention(q, bad_k, q))
    else:
        _raises(ValueError, r"invalid input on rank\(s\) \[1\]", lambda: ring_attention(q, bad_k, q))
    causal = rank == 0
    _raises(ValueError, r"causal must be equal", lambda: ring_attention(q, q, q, causal=causal))
    mixed = q.float() if rank == 1 else q
    _raises(ValueError, r"dtype must be equal", lambda: ring_attention(mixed, mixed, mixed))
    state = _full(1, 2, 4, 4, seed=3) if rank == 1 else None
    _raises(
        ValueError,
        r"initial_state given must be equal",
        lambda: sequence_parallel_linear_attention(q, q, q, initial_state=state),
    )
    _raises(
        TypeError, r"scale must be a float", lambda: sequence_parallel_linear_attention(q, q, q, scale=None)
    )
    gate = _full(1, 2, 3, 1, seed=1).clamp(max=0) if rank == 0 else None
    _raises(ValueError, r"log_gate width", lambda: sequence_parallel_linear_attention(q, q, q, log_gate=gate))
    _raises(
        ValueError,
        r"log_gate must broadcast",
        lambda: sequence_parallel_linear_attention(q, q, q, log_gate=_full(1, 2, 5, 1, seed=2)),
    )
    _raises(
        ValueError,
        r"initial_state has size",
        lambda: sequence_parallel_linear_attention(q, q, q, initial_state=_full(1, 2, 4, 3, seed=0)),
    )
    _raises(
        ValueError,
        r"not divisible by the",
        lambda: shard_sequence(_full(2, world * 3 + 1, seed=0), dim=1),
    )
    _raises(ValueError, r"dim=5 is out of range", lambda: shard_sequence(q, dim=5))
    _raises(
        TypeError, r"q must be a torch.Tensor", lambda: ring_attention(None, q, q)
    )  # local: no collective
    _raises(TypeError, r"q, k and v must share one dtype", lambda: ring_attention(q, q, q.float()))
    out = ring_attention(q, q, q)  # the group still works after the errors
    assert out.shape == q.shape


def hang(rank: int, world: int) -> None:
    """Rank 0 waits for a message nobody sends: the harness's timeout must end it."""
    if rank == 0:
        dist.recv(torch.zeros(1), src=1)


SCENARIOS: dict[str, Callable[[int, int], None]] = {
    "ring": ring,
    "ring_end_to_end": ring_end_to_end,
    "ring_low_precision": ring_low_precision,
    "ring_subgroups": ring_subgroups,
    "ring_structure": ring_structure,
    "linear": linear,
    "helpers": helpers,
    "errors": errors,
}

# scenarios that test the harness itself (not run as attnzoo checks)
HARNESS_CHECKS: dict[str, Callable[[int, int], None]] = {"hang": hang}
