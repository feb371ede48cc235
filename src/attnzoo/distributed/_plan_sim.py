"""The simulated half of ``python -m attnzoo.distributed.report``: synthetic document-length mixes
(:data:`MIXES`), the report's presets (:class:`ReportConfig`) and :func:`simulate`, which plans
every mix, token count and world size with every planner and records the plans' exact counts of
load imbalance and bytes (no processes)."""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from attnzoo.distributed._plan import CoreAttentionPlan
from attnzoo.distributed.planner import plan_core_attention, plan_local, plan_per_document

__all__ = ["MIXES", "PRESETS", "Mix", "ReportConfig", "document_lengths", "simulate"]

K = 1024


@dataclass(frozen=True)
class Mix:
    """Documents drawn one by one until ``T`` tokens are full: with probability ``long_prob`` a long
    document, uniform in ``[long_min, min(long_max, T)]`` tokens, otherwise a short one,
    lognormal with median ``short_median`` and log-standard-deviation ``short_sigma`` (at least
    16 tokens); the last document is cut to fill exactly ``T``."""

    short_median: int
    short_sigma: float
    long_prob: float = 0.0
    long_min: int = 0
    long_max: int = 0

    def describe(self) -> str:
        text = f"lognormal(median {self.short_median}, sigma {self.short_sigma:g}) tokens"
        if self.long_prob:
            text = (
                f"with probability {1 - self.long_prob:g} {text}, otherwise uniform in "
                f"[{self.long_min}, min({self.long_max}, T)] tokens"
            )
        return text + " (at least 16; the last document cut to fill T)"


MIXES = {
    # DistCA's setting: many short documents and a few long ones that dominate the FLOPs
    "long_tail": Mix(short_median=1 * K, short_sigma=0.9, long_prob=0.05, long_min=8 * K, long_max=128 * K),
    # a pretraining-like mix: short documents with a lognormal tail, nothing planted
    "lognormal": Mix(short_median=1 * K, short_sigma=1.5),
    # the real run's long-tailed mix, scaled to its few thousand tokens
    "long_tail_small": Mix(short_median=128, short_sigma=0.9, long_prob=0.05, long_min=1 * K, long_max=2 * K),
}


def document_lengths(mix: str, total: int, seed: int) -> list[int]:
    """Document lengths of ``MIXES[mix]`` summing to ``total``, from ``random.Random(seed)``."""
    spec, rng = MIXES[mix], random.Random(seed)
    lengths, left = [], total
    while left:
        if rng.random() < spec.long_prob:
            n = rng.randint(spec.long_min, max(spec.long_min, min(spec.long_max, total)))
        else:
            n = max(16, round(rng.lognormvariate(math.log(spec.short_median), spec.short_sigma)))
        n = min(n, left)
        lengths.append(n)
        left -= n
    return lengths


@dataclass(frozen=True)
class ReportConfig:
    """What the report measures (``--preset full`` is the committed report's)."""

    preset: str = "full"
    mixes: tuple[str, ...] = ("long_tail", "lognormal")
    tokens: tuple[int, ...] = (64 * K, 256 * K, 1024 * K)
    worlds: tuple[int, ...] = (8, 32, 128, 512)
    seeds: tuple[int, ...] = (0, 1, 2)
    tolerance: float = 0.1
    min_chunks: tuple[int, ...] = (128, 32)
    real_worlds: tuple[int, ...] = (2, 4)
    real_tokens: int = 8 * K
    real_mix: str = "long_tail_small"
    real_repeats: int = 5
    gemm_n: int = 2048


PRESETS = {
    "full": ReportConfig(),
    "tiny": ReportConfig(
        preset="tiny",
        mixes=("long_tail_small",),
        tokens=(4 * K,),
        worlds=(8, 32),
        seeds=(0,),
        min_chunks=(32,),
        real_worlds=(2,),
        real_tokens=512,
        real_repeats=2,
        gemm_n=256,
    ),
}


def _plans(lengths: list[int], world: int, config: ReportConfig) -> dict[str, CoreAttentionPlan]:
    plans = {"local": plan_local(lengths, world), "per_document": plan_per_document(lengths, world)}
    for chunk in config.min_chunks:
        plans[f"distca_c{chunk}"] = plan_core_attention(
            lengths, world, tolerance=config.tolerance, min_chunk=chunk
        )
    return plans


def simulate(config: ReportConfig) -> list[dict[str, Any]]:
    """One row per mix, ``T``, ``W``, seed and planner: imbalance, bytes (:class:`Traffic`), tasks."""
    rows = []
    for mix in config.mixes:
        for total in config.tokens:
            for seed in config.seeds:
                lengths = document_lengths(mix, total, seed)
                for world in config.worlds:
                    start = time.perf_counter()
                    plans = _plans(lengths, world, config)
                    for name, plan in plans.items():
                        rows.append(
                            {
                                "mix": mix,
                                "tokens": total,
                                "world": world,
                                "seed": seed,
                                "planner": name,
                                "documents": len(lengths),
                                "longest": max(lengths),
                                "imbalance": plan.imbalance,
                                "tasks": len(plan.tasks),
                                **asdict(plan.traffic()),
                            }
                        )
                    rows[-1]["plan_seconds_all"] = time.perf_counter() - start
    return rows
