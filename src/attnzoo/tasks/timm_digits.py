"""timm's ViT-Tiny on the digits task with its attention swapped to each 2-D token mixer.

The model is ``timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=2, in_chans=1,
num_classes=10)``: 12 blocks of width 192 with 3 heads over the 4 x 4 patch grid of an 8 x 8 digit
and a class token (17 tokens). The baseline keeps timm's ``Attention``; every other contender is
the same model built with ``attn_layer=vit_attention(name, **MIXER_KWARGS[name])`` and bound to its
patch grid (:mod:`attnzoo.integrations.timm`: the mixer mixes the patch grid, a global softmax
attention updates the class token), so timm initialises all of them alike.

Each (contender, seed) is trained from scratch on the fixed 1,347-image training split of
:func:`attnzoo.tasks.digits.digits_split`, standardised with its pixel mean and std (AdamW, linear
warm-up then cosine decay, gradient clipping at 1; the same epochs, batch and learning rate for all;
the seed fixes the initialisation and the batch order) and scored once on the 450 test images. Time
per training step (forward, loss, backward, AdamW step on one fixed batch) is measured interleaved:
after warm-up, each repeat calls every contender once, and a 2048 x 2048 fp32 GEMM as the machine's
reference, so load affects all alike; the minimum over the repeats is reported with the median, the
load average before and after the run, the parameters and the FLOPs of a step
(:func:`attnzoo.bench.measure.count_flops`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import attnzoo
from attnzoo.bench.measure import count_flops, time_interleaved
from attnzoo.bench.runner import machine_metadata
from attnzoo.tasks.data import TaskData
from attnzoo.tasks.digits import digits_split
from attnzoo.tasks.runner import evaluate

__all__ = [
    "BASELINE",
    "MIXER_KWARGS",
    "MODEL",
    "PRESETS",
    "TimmDigitsConfig",
    "contenders",
    "report_markdown",
    "run_timm_digits",
]

MODEL = "vit_tiny_patch16_224"
MODEL_KWARGS: dict[str, Any] = {
    "pretrained": False,
    "img_size": 8,
    "patch_size": 2,
    "in_chans": 1,
    "num_classes": 10,
}
BASELINE = "timm Attention"
GEMM_N = 2048

QUADRANTS = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
"""region_attention's region map on the 4 x 4 patch grid: its four 2 x 2 quadrants (digits come
without segmentation masks)."""

MIXER_KWARGS: dict[str, dict[str, Any]] = {
    "agent_attention": {"agent_num": 4, "window": 4},
    "agent_attention_pvt": {"agent_num": 4, "window": 4, "sr_ratio": 2},
    "biformer_bra": {"n_win": 2, "topk": 2},
    "dffreq_window_attention": {"window_size": 2, "bias": True},
    "neighborhood_attention_2d": {"kernel_size": 3},
    "region_attention": {"region_map": QUADRANTS},
    "vig": {},
}
"""Options of each 2-D mixer on the 4 x 4 grid: 2 x 2 agents, windows, regions and routing regions
of 2 x 2 patches, 3 x 3 neighbourhoods. A 2-D mixer without an entry runs with its card's ``tiny``
options (minus ``dim``/``num_heads``, which come from the model)."""


@dataclass(frozen=True)
class TimmDigitsConfig:
    """One run's settings (recorded in ``results.json``).

    Attributes:
        preset: name of the preset it came from.
        epochs / batch_size / lr / weight_decay / warmup_steps: the training budget of every run
            (the last incomplete batch of an epoch is dropped).
        seeds: one training run per seed and contender.
        timing_warmup / timing_repeats: untimed calls per contender, then interleaved repeats.
        threads: torch intra-op threads.
        model: timm ``create_model`` arguments replacing ViT-Tiny's (``quick`` shrinks it).
        max_steps: stop each run after this many steps (``quick``), ``None`` for the full budget.
    """

    preset: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    seeds: tuple[int, ...]
    timing_warmup: int
    timing_repeats: int
    threads: int
    model: dict[str, Any] = field(default_factory=dict)
    max_steps: int | None = None


PRESETS: dict[str, TimmDigitsConfig] = {
    "full": TimmDigitsConfig("full", 2, 16, 5e-4, 0.05, 10, (0, 1, 2), 2, 5, 2),
    "quick": TimmDigitsConfig(
        "quick", 1, 16, 1e-3, 0.05, 1, (0,), 1, 2, 1, {"embed_dim": 24, "depth": 1, "num_heads": 2}, 2
    ),
}


def _json_safe(value: Any) -> Any:
    return value.tolist() if isinstance(value, torch.Tensor) else value


def contenders(mechanisms: Sequence[str] | None = None) -> list[tuple[str, str | None, dict[str, Any]]]:
    """``(label, mechanism or None for the baseline, options)``: the baseline, then ``mechanisms``
    (default: every 2-D token mixer)."""
    names = (
        [attnzoo.card(n).name for n in mechanisms]
        if mechanisms is not None
        else [n for n in attnzoo.list_mechanisms("token_mixer") if attnzoo.card(n).spatial_dims == 2]
    )
    out: list[tuple[str, str | None, dict[str, Any]]] = [(BASELINE, None, {})]
    for name in names:
        if name in MIXER_KWARGS:
            options = dict(MIXER_KWARGS[name])
        else:
            options = {k: v for k, v in attnzoo.card(name).tiny.items() if k not in ("dim", "num_heads")}
        out.append((name, name, options))
    return out


def _build(mechanism: str | None, options: dict[str, Any], config: TimmDigitsConfig, seed: int) -> nn.Module:
    import timm

    from attnzoo.integrations.timm import bind, vit_attention

    torch.manual_seed(seed)
    kwargs = {**MODEL_KWARGS, **config.model}
    if mechanism is None:
        return timm.create_model(MODEL, **kwargs)
    model = timm.create_model(MODEL, attn_layer=vit_attention(mechanism, **options), **kwargs)
    return bind(model) if attnzoo.card(mechanism).spatial_dims == 2 else model


def _standardised(data: TaskData) -> TaskData:
    """``data`` with images shifted and scaled by the training split's pixel mean and std."""
    mean, std = data.train["images"].mean(), data.train["images"].std()
    splits = [{**split, "images": (split["images"] - mean) / std} for split in (data.train, data.test)]
    config = {**data.config, "standardised": {"mean": float(mean), "std": float(std)}}
    return TaskData(data.name, data.kind, splits[0], splits[1], data.meta, config)


def _optimizer(model: nn.Module, config: TimmDigitsConfig, total: int) -> tuple[Any, Any]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=config.lr,
    )
    warm = max(1, min(config.warmup_steps, total - 1))
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warm, total_iters=warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warm)),
        ],
        milestones=[warm],
    )
    return opt, sched


def _train(model: nn.Module, data: TaskData, config: TimmDigitsConfig, seed: int) -> dict[str, Any]:
    x, y = data.train["images"], data.train["labels"]
    per_epoch = x.shape[0] // config.batch_size
    total = config.epochs * per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    opt, sched = _optimizer(model, config, total)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    losses: list[float] = []
    while len(losses) < total:
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(min(per_epoch, total - len(losses))):
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {len(losses) + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
    seconds = time.perf_counter() - start
    tail = losses[-min(len(losses), per_epoch) :]
    return {
        "seed": seed,
        "steps": total,
        "test_accuracy": evaluate(model, data),
        "train_loss_last_epoch": statistics.fmean(tail),
        "train_seconds": seconds,
    }


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _digits() -> TaskData:
    """The digits' fixed split, all 1,347 training images (no learning rate or checkpoint is chosen
    here, so none is held out) and the 450 test images, standardised."""
    x_train, x_test, y_train, y_test = digits_split()
    meta = {"image_shape": tuple(x_train.shape[1:]), "num_classes": 10, "seq_len": 16, "chance": 0.1}
    config = {
        "source": "sklearn.datasets.load_digits",
        "split": "stratified 25% test per class, RandomState(0)",
        "num_train": int(x_train.shape[0]),
        "num_test": int(x_test.shape[0]),
    }
    train, test = {"images": x_train, "labels": y_train}, {"images": x_test, "labels": y_test}
    return _standardised(TaskData("digits", "image", train, test, meta, config))


def _train_job(
    mechanism: str | None, options: dict[str, Any], config: TimmDigitsConfig, seed: int, threads: int
) -> dict[str, Any]:
    """One training run with ``threads`` torch threads (in a worker process when ``jobs > 1``)."""
    torch.set_num_threads(threads)
    return _train(_build(mechanism, options, config, seed), _digits(), config, seed)


def _train_all(
    entries: list[tuple[str, str | None, dict[str, Any]]], config: TimmDigitsConfig, jobs: int, progress: bool
) -> list[dict[str, Any]]:
    """One row per contender with its runs (one per seed), trained ``jobs`` at a time."""
    work = [
        (label, mechanism, options, seed) for label, mechanism, options in entries for seed in config.seeds
    ]
    threads = max(1, config.threads // jobs)
    runs: dict[tuple[str, int], dict[str, Any]] = {}

    def done(label: str, seed: int, run: dict[str, Any]) -> None:
        runs[label, seed] = run
        if progress:
            print(f"{label} seed {seed}: test accuracy {run['test_accuracy']:.3f}", flush=True)

    if jobs == 1:
        for label, mechanism, options, seed in work:
            done(label, seed, _train_job(mechanism, options, config, seed, threads))
    else:
        context = mp.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {
                pool.submit(_train_job, m, o, config, seed, threads): (label, seed)
                for label, m, o, seed in work
            }
            for future in as_completed(futures):
                done(*futures[future], future.result())
    rows = []
    for label, mechanism, options in entries:
        own = [runs[label, seed] for seed in config.seeds]
        accs = [r["test_accuracy"] for r in own]
        rows.append(
            {
                "label": label,
                "mechanism": mechanism,
                "options": {k: _json_safe(v) for k, v in options.items()},
                "runs": own,
                "accuracy_mean": statistics.fmean(accs),
                "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            }
        )
    return rows


def _measure(
    rows: list[dict[str, Any]],
    entries: list[tuple[str, str | None, dict[str, Any]]],
    data: TaskData,
    config: TimmDigitsConfig,
) -> dict[str, Any]:
    """Add ``params``, ``step_flops`` and ``step_ms`` to ``rows``; returns the GEMM's timing."""
    x, y = data.train["images"][: config.batch_size], data.train["labels"][: config.batch_size]
    models = {label: _build(mechanism, options, config, 0).train() for label, mechanism, options in entries}
    fns: dict[str, Callable[[], Any]] = {label: _step_fn(m, x, y) for label, m in models.items()}
    a, b = torch.randn(GEMM_N, GEMM_N), torch.randn(GEMM_N, GEMM_N)
    fns["gemm"] = lambda: a @ b
    timing = time_interleaved(fns, warmup=config.timing_warmup, repeats=config.timing_repeats)
    for row in rows:
        model = models[row["label"]]
        row["params"] = sum(p.numel() for p in model.parameters())
        row["step_flops"] = count_flops(lambda m=model: F.cross_entropy(m(x), y).backward())
        row["step_ms"] = timing[row["label"]]
    gemm = timing["gemm"]
    return {"n": GEMM_N, **gemm, "gflops": 2 * GEMM_N**3 / (gemm["min"] * 1e-3) / 1e9}


def run_timm_digits(
    config: TimmDigitsConfig,
    mechanisms: Sequence[str] | None = None,
    *,
    jobs: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and time every contender (see the module docstring); returns the JSON-ready result.

    Training runs ``jobs`` at a time, each in its own worker process with ``config.threads // jobs``
    threads when ``jobs > 1`` (a run's result depends on nothing else); the step timing runs in this
    process with ``config.threads`` threads (restored afterwards).

    Raises:
        UnknownMechanismError / IntegrationError: a mechanism is unknown or does not fit a timm
            ViT (before anything is trained).
    """
    import timm

    from attnzoo.integrations.timm import vit_attention

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    entries = contenders(mechanisms)
    for _, mechanism, options in entries:
        if mechanism is not None:
            vit_attention(mechanism, **options)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        load_before = list(os.getloadavg())
        data = _digits()
        rows = _train_all(entries, config, jobs, progress)
        gemm = _measure(rows, entries, data, config)
        load_after = list(os.getloadavg())
    finally:
        torch.set_num_threads(threads)
    return {
        "meta": {
            **machine_metadata(config.threads),
            "timm": timm.__version__,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "jobs": jobs,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        },
        "config": {
            **dataclasses.asdict(config),
            "timm_model": MODEL,
            "timm_kwargs": {**MODEL_KWARGS, **config.model},
        },
        "data": data.config,
        "gemm": gemm,
        "contenders": rows,
    }


def report_markdown(doc: dict[str, Any]) -> str:
    """The result as a Markdown report: configuration, machine, and one row per contender."""
    cfg, meta, gemm = doc["config"], doc["meta"], doc["gemm"]
    seeds = cfg["seeds"]
    load = ", ".join(f"{v:.2f}" for v in meta["load_average_before"] + meta["load_average_after"])
    base = next(r for r in doc["contenders"] if r["mechanism"] is None)["step_ms"]["min"]
    call = ", ".join([repr(cfg["timm_model"]), *(f"{k}={v!r}" for k, v in cfg["timm_kwargs"].items())])
    limit = f"at most {cfg['max_steps']} steps, " if cfg["max_steps"] else ""
    columns = ["attention", "options", "params", "GFLOP / step", "step ms (min)", "median", "vs timm"]
    columns += ["% of GEMM"]
    columns += ["test acc (mean ± sd)", *(f"seed {s}" for s in seeds)]
    lines = [
        f"# timm {cfg['timm_model']} on digits, attention swapped per 2-D token mixer",
        "",
        f"Model: `timm.create_model({call})`, attention from "
        "`attnzoo.integrations.timm.vit_attention(name, **options)` (patch grid from the model; the "
        "class token is updated by a global softmax attention, except in agent_attention, which takes it "
        "natively).",
        f"Training (preset `{cfg['preset']}`): {cfg['epochs']} epoch(s) of batch {cfg['batch_size']} ({limit}"
        f"AdamW lr {cfg['lr']:g}, weight decay {cfg['weight_decay']:g}, {cfg['warmup_steps']} warm-up "
        f"steps, cosine), seeds {', '.join(map(str, seeds))}, {meta['jobs']} run(s) at a time with "
        f"{max(1, cfg['threads'] // meta['jobs'])} thread(s) each; test accuracy on "
        f"{doc['data']['num_test']} images.",
        f"Time per training step (forward, loss, backward, AdamW; batch {cfg['batch_size']}): minimum and "
        f"median of {cfg['timing_repeats']} interleaved repeats after {cfg['timing_warmup']} warm-up "
        f"call(s), {meta['threads']} thread(s), {meta['cpu']}; a {gemm['n']}x{gemm['n']} fp32 GEMM in the "
        f"same repeats took {gemm['min']:.1f} ms ({gemm['gflops']:.0f} GFLOP/s). Load average (1, 5, 15 min) "
        f"before and after: {load}; OMP_WAIT_POLICY {meta['omp_wait_policy']}. torch {meta['torch']}, "
        f"timm {meta['timm']}, {meta['date']}. % of GEMM: the step's counted FLOPs per second at its minimum "
        "time, as a share of the GEMM's rate.",
        "",
        f"Budget: {cfg['epochs']} epoch(s) train the ViT from scratch only partway, so the accuracies "
        "compare how fast each mixer learns under one fixed budget, not converged quality.",
        "",
        "| " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * (len(columns) - 2),
    ]
    for r in doc["contenders"]:
        name = r["label"] if r["mechanism"] is None else f"`{r['label']}`"
        opts = ", ".join(f"{k}={'quadrants' if k == 'region_map' else v}" for k, v in r["options"].items())
        cells = [
            name,
            opts or "–",
            f"{r['params'] / 1e6:.2f}M",
            f"{r['step_flops'] / 1e9:.2f}",
            f"{r['step_ms']['min']:.1f}",
            f"{r['step_ms']['median']:.1f}",
            f"{r['step_ms']['min'] / base:.2f}x",
            f"{100 * r['step_flops'] / (r['step_ms']['min'] * 1e-3) / (gemm['gflops'] * 1e9):.0f}%",
            f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}",
            *(f"{run['test_accuracy']:.3f}" for run in r["runs"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
