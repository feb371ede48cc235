"""Core attention disaggregation plans (no processes): every planner covers every query of every
document exactly once with its causal key prefix; the DistCA planner balances within its tolerance
while moving fewer bytes than the naive per-document placement; Traffic counts exactly the rows the
executor routes; bad arguments name themselves."""

from __future__ import annotations

import random

import pytest

from attnzoo.distributed import (
    AttentionShape,
    CoreAttentionPlan,
    DisaggregatedAttention,
    plan_core_attention,
    plan_local,
    plan_per_document,
)
from attnzoo.distributed.executor import _routes
from attnzoo.distributed.planner import _prefix_stop, _suffix_start

K = 1024
PLANNERS = {
    "local": plan_local,
    "per_document": plan_per_document,
    "distca": lambda d, w: plan_core_attention(d, w, tolerance=0.1, min_chunk=4),
}


def _packed(world: int, per_rank: int, seed: int, straddle: bool) -> list[int]:
    """Lognormal document lengths filling ``world`` shards of ``per_rank`` tokens; with ``straddle``
    documents run across shard borders, otherwise every shard ends at a document end."""
    rng = random.Random(seed)
    lengths: list[int] = []
    for _ in range(1 if straddle else world):
        left = per_rank * (world if straddle else 1)
        while left:
            length = min(max(1, int(rng.lognormvariate(4.0, 1.3))), left)
            lengths.append(length)
            left -= length
    return lengths


def _brute_force(plan: CoreAttentionPlan) -> tuple[int, int, list[int]]:
    """Token-level recount: (query rows moved, key/value rows moved, pairs per rank)."""
    n, offsets = plan.tokens_per_rank, plan.doc_offsets
    q_moved, kv_needed, loads = 0, set(), [0] * plan.world_size
    seen = [[0] * length for length in plan.doc_lengths]
    for t in plan.tasks:
        for i in range(t.start, t.stop):
            seen[t.doc][i] += 1
            loads[t.rank] += i + 1
            q_moved += (offsets[t.doc] + i) // n != t.rank
        kv_needed |= {(t.rank, offsets[t.doc] + j) for j in range(t.stop)}
    assert all(c == 1 for row in seen for c in row), "every query exactly once"
    return q_moved, sum(pos // n != rank for rank, pos in kv_needed), loads


@pytest.mark.parametrize("straddle", [False, True])
@pytest.mark.parametrize("world", [2, 5, 8])
@pytest.mark.parametrize("method", sorted(PLANNERS))
def test_plans_cover_every_query_once_and_traffic_is_exact(method: str, world: int, straddle: bool) -> None:
    lengths = _packed(world, 300, seed=world, straddle=straddle)
    plan = PLANNERS[method](lengths, world)
    assert plan.method == method and plan.doc_lengths == tuple(lengths)
    assert all(0 <= t.start < t.stop <= lengths[t.doc] and 0 <= t.rank < world for t in plan.tasks)
    q_moved, kv_moved, loads = _brute_force(plan)
    assert plan.loads() == loads and sum(loads) == sum(n * (n + 1) // 2 for n in lengths)
    traffic = plan.traffic()
    assert (traffic.q_tokens, traffic.kv_tokens) == (q_moved, kv_moved)
    shape = plan.shape
    assert traffic.forward_bytes == q_moved * (shape.q_bytes + shape.out_bytes) + kv_moved * shape.kv_bytes
    assert traffic.backward_bytes == q_moved * 2 * shape.q_bytes + kv_moved * shape.kv_bytes
    # the executor routes exactly these rows: off-home rows of every rank's buffers
    routes = [_routes(plan, r) for r in range(world)]
    for kind, moved in (("query", q_moved), ("kv", kv_moved)):
        off_home = sum(
            len(getattr(routes[r], kind).send[p]) for r in range(world) for p in range(world) if p != r
        )
        assert off_home == moved, kind
    if method == "local":
        assert traffic.q_tokens == 0 and (traffic.kv_tokens > 0) == straddle


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("world", [8, 32, 64])
def test_distca_balances_within_tolerance_and_moves_less_than_per_document(world: int, seed: int) -> None:
    lengths = _packed(world, 4 * K, seed=seed, straddle=False)
    local, naive = plan_local(lengths, world), plan_per_document(lengths, world)
    for tolerance in (0.05, 0.2):
        plan = plan_core_attention(lengths, world, tolerance=tolerance)
        assert plan.imbalance <= 1 + tolerance, (tolerance, plan.imbalance)
        assert plan.imbalance < local.imbalance and plan.tolerance == tolerance
        assert plan.traffic().forward_bytes < naive.traffic().forward_bytes
        pieces = [t.stop - t.start for t in plan.tasks]
        assert min(pieces) >= min(128, min(lengths))  # pieces split off keep min_chunk queries


def test_distca_splits_only_the_overloaded_document_as_in_the_official_planner_test() -> None:
    # distca's tests/test_planner_equal_flops.py: ranks hold 1 x 16K, 2 x 8K, 4 x 4K, 8 x 2K tokens;
    # DistCA's planner splits only the 16K document (into pieces on ranks 0, 2 and 3)
    lengths = [16 * K] + [8 * K] * 2 + [4 * K] * 4 + [2 * K] * 8
    plan = plan_core_attention(lengths, 4, tolerance=0.1)
    assert plan.imbalance <= 1.1
    moved = {t.doc for t in plan.tasks if t.rank != plan.doc_offsets[t.doc] // plan.tokens_per_rank}
    assert moved == {0}
    assert {t.rank for t in plan.tasks if t.doc == 0} == {0, 2, 3}


def test_zero_tolerance_balances_to_one_token() -> None:
    lengths = _packed(6, 512, seed=3, straddle=True)
    plan = plan_core_attention(lengths, 6, tolerance=0.0, min_chunk=1)
    loads, mean = plan.loads(), sum(plan.loads()) / 6
    assert max(loads) - mean <= max(lengths)  # within one query's keys


def test_per_document_keeps_documents_whole_heaviest_first() -> None:
    plan = plan_per_document([10, 2, 2, 2, 2, 2], 2)  # ranks hold [10, 2] and [2, 2, 2, 2]
    assert [(t.doc, t.start, t.stop) for t in plan.tasks] == [
        (d, 0, n) for d, n in enumerate([10, 2, 2, 2, 2, 2])
    ]
    assert plan.tasks[0].rank == 0 and all(t.rank == 1 for t in plan.tasks[1:])  # 55 vs 15 pairs


def test_piece_bounds_match_brute_force() -> None:
    def pairs(a: int, b: int) -> int:
        return sum(i + 1 for i in range(a, b))

    for start, stop in [(0, 1), (0, 40), (7, 30), (31, 32)]:
        for budget in range(0, pairs(start, stop) + 3):
            e, s = _prefix_stop(start, budget), _suffix_start(stop, budget)
            assert e == max(x for x in range(start, 10 * stop) if pairs(start, x) <= budget)
            assert s == min(x for x in range(0, stop + 1) if pairs(x, stop) <= budget)


def test_attention_shape_bytes_and_flops() -> None:
    shape = AttentionShape(num_heads=4, num_kv_heads=2, head_dim=8, element_bytes=4)
    assert (shape.q_bytes, shape.kv_bytes, shape.out_bytes) == (128, 128, 4 * (32 + 4))
    assert shape.flops(10) == 4 * 4 * 8 * 10
    assert AttentionShape(4, 4, 8, element_bytes=8, lse_bytes=8).out_bytes == 4 * (64 + 8)
    with pytest.raises(ValueError, match="num_kv_heads must be positive"):
        AttentionShape(num_kv_heads=0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: plan_core_attention([3, 5], 3),
            ValueError,
            r"doc_lengths sum to 8 tokens, not a multiple of world_size=3",
        ),
        (lambda: plan_core_attention([3, 0], 3), ValueError, r"doc_lengths\[1\] must be positive"),
        (lambda: plan_core_attention([3, 2.5], 1), TypeError, r"doc_lengths\[1\] must be an int"),
        (lambda: plan_core_attention("ab", 1), TypeError, r"doc_lengths must be a sequence of ints"),
        (lambda: plan_core_attention([], 1), ValueError, r"doc_lengths must name at least one document"),
        (lambda: plan_local([4], 0), ValueError, r"world_size must be positive"),
        (lambda: plan_per_document([4], True), TypeError, r"world_size must be an int"),
        (lambda: plan_core_attention([4], 2, tolerance=-0.1), ValueError, r"tolerance must be >= 0"),
        (lambda: plan_core_attention([4], 2, min_chunk=0), ValueError, r"min_chunk must be positive"),
        (lambda: plan_core_attention([4], 2, shape=(1, 2)), TypeError, r"shape must be an attnzoo"),
    ],
)
def test_bad_arguments_name_themselves(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_module_plans_with_its_planner_and_caches_the_latest_layouts() -> None:
    attn = DisaggregatedAttention(tolerance=0.05, min_chunk=4, cache_size=2)
    lengths = _packed(4, 300, seed=1, straddle=True)
    plan = attn.plan(lengths, 4)
    assert plan == plan_core_attention(lengths, 4, tolerance=0.05, min_chunk=4)
    assert attn.plan(tuple(lengths), 4) is plan  # cached, whatever the sequence type
    other = attn.plan([600, 600], 4)
    attn.plan([1200], 4)  # a third layout drops the least recently used
    assert attn.plan([600, 600], 4) is other and attn.plan(lengths, 4) is not plan
    assert DisaggregatedAttention(planner="per_document").plan(lengths, 4) == plan_per_document(lengths, 4)
    assert DisaggregatedAttention(planner="local").plan(lengths, 4).method == "local"
    with pytest.raises(TypeError, match=r"doc_lengths\[0\] must be an int"):
        attn.plan([[1]], 1)  # checked before the cache sees it


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"planner": "ring"}, ValueError, r"planner must be one of \('distca', 'per_document', 'local'\)"),
        ({"tolerance": -1.0}, ValueError, r"tolerance must be >= 0"),
        ({"min_chunk": 0}, ValueError, r"min_chunk must be positive"),
        ({"cache_size": 0}, ValueError, r"cache_size must be positive"),
        ({"scale": 0.0}, ValueError, r"scale must be"),
    ],
)
def test_module_arguments_name_themselves(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        DisaggregatedAttention(**kwargs)
