"""Ulysses scenarios of the sequence-parallel tests (spawned gloo processes, float64): outputs and
gradients equal single-process attention for plain, causal and scaled attention and for several
heads per rank; a head count that does not divide the group, or unequal shards, raises on every
rank before any all-to-all moves data."""

from __future__ import annotations

import torch
from tests.distributed._workers import DK, DV, N_LOCAL, _close, _full, _leaf, _raises, _slice

from attnzoo.distributed import gather_sequence, shard_sequence, ulysses_attention
from attnzoo.distributed import ulysses as ulysses_module
from attnzoo.kernels import attention

B = 2


def _case(rank: int, world: int, heads: int, causal: bool, scale: float | None, seed: int) -> None:
    n = N_LOCAL * world
    q, k, v = (
        _full(B, heads, n, DK, seed=seed),
        _full(B, heads, n, DK, seed=seed + 1),
        _full(B, heads, n, DV, seed=seed + 2),
    )
    w = _full(B, heads, n, DV, seed=seed + 3)
    ref_in = [_leaf(t) for t in (q, k, v)]
    ref = attention(*ref_in, causal=causal, scale=scale)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_in)
    local = [_leaf(_slice(t, rank)) for t in (q, k, v)]
    out = ulysses_attention(*local, causal=causal, scale=scale)
    (out * _slice(w, rank)).sum().backward()
    tag = f"rank {rank}/{world} heads={heads} causal={causal} scale={scale}"
    _close(out, _slice(ref, rank).detach(), f"{tag} out")
    for name, t, g in zip("qkv", local, ref_grads):
        _close(t.grad, _slice(g, rank), f"{tag} d{name}")


def ulysses(rank: int, world: int) -> None:
    cases = [(world, False, None), (world, True, None), (2 * world, True, 0.3), (3 * world, False, 1.7)]
    for seed, (heads, causal, scale) in enumerate(cases):
        _case(rank, world, heads, causal, scale, seed=10 * seed)


def ulysses_end_to_end(rank: int, world: int) -> None:
    """Replicated inputs -> shard -> ulysses -> gather; float32 keeps its dtype."""
    n = N_LOCAL * world
    q, k, v = (_full(1, 2 * world, n, DK, seed=s) for s in (1, 2, 3))
    ref = attention(q, k, v, causal=True)
    full_in = [_leaf(t) for t in (q, k, v)]
    out = gather_sequence(ulysses_attention(*(shard_sequence(t, dim=2) for t in full_in), causal=True), dim=2)
    _close(out, ref, f"rank {rank} gathered out")
    low = ulysses_attention(*(_slice(t, rank).float() for t in (q, k, v)), causal=True)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), _slice(ref, rank), atol=1e-5, rtol=1e-5)


def ulysses_errors(rank: int, world: int) -> None:
    """No all-to-all runs for a bad input; every rank raises; the group stays usable."""
    calls: list[str] = []
    original = ulysses_module.all_to_all

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(str(kwargs.get("what")))
        return original(*args, **kwargs)

    ulysses_module.all_to_all = counting
    try:
        odd = _full(1, world + 1, 3, 4, seed=0)  # every rank: h = W + 1
        _raises(ValueError, rf"q has {world + 1} heads .* not a multiple of the {world} ranks",
                lambda: ulysses_attention(odd, odd, odd))
        heads = world + 1 if rank == 1 else world  # only rank 1 is wrong
        x = _full(1, heads, 3, 4, seed=0)
        if rank == 1:
            _raises(ValueError, r"q has .* heads", lambda: ulysses_attention(x, x, x))
        else:
            _raises(ValueError, r"invalid input on rank\(s\) \[1\]", lambda: ulysses_attention(x, x, x))
        uneven = _full(1, world, 3 + (rank == 0), 4, seed=0)  # N does not split into equal shards
        _raises(
            ValueError,
            r"shard length \(dimension 2 of q\) must be equal on every rank",
            lambda: ulysses_attention(uneven, uneven, uneven),
        )
        good = _full(1, world, 3, 4, seed=0)
        _raises(TypeError, r"causal must be a bool", lambda: ulysses_attention(good, good, good, causal=1))
        assert calls == [], calls
        assert ulysses_attention(good, good, good).shape == good.shape
        assert len(calls) == 2, calls
    finally:
        ulysses_module.all_to_all = original


SCENARIOS = {"ulysses": ulysses, "ulysses_end_to_end": ulysses_end_to_end, "ulysses_errors": ulysses_errors}
