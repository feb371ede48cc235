"""Train a small ViT on ``digits`` with and without attention AT / iAT / VAT and compare them.

``python -m attnzoo.training.demo`` trains :class:`attnzoo.models.ViTTiny` (the ``digits`` task's
``cpu`` preset backbone, ``mhsa`` by default) on sklearn's 8x8 digits. A validation split (20% of the
training split, the same for every seed) chooses each method's ``epsilon`` from a grid with the first
seed; the test split is only measured. For every method and seed it reports test accuracy, test
accuracy under an attention-score attack (AT's ``r_adv`` on the test labels, norm ``--attack-eps``),
the entropy of the attention rows (the papers' sharpness) and the Pearson correlation between the
last layer's attention to each patch and its gradient importance ``||d logit_y / d token||`` (the
papers' agreement with gradient-based importance). Writes ``results.json`` and ``report.md`` to a
new folder under ``--runs`` unless ``--out`` names one (which is then replaced)::

    python -m attnzoo.training.demo --out reports/training/digits_mhsa
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import attnzoo
from attnzoo.runs import new_run_dir, replace_outputs
from attnzoo.tasks import build_model, get_task
from attnzoo.tasks.data import Split, TaskData
from attnzoo.training.adversarial import attention_adversarial_loss, attention_vat_loss
from attnzoo.training.report import report_markdown

__all__ = ["METHODS", "DemoConfig", "main", "run_demo"]

METHODS: tuple[str, ...] = ("baseline", "at", "iat", "vat", "ivat")
PRODUCED: tuple[str, ...] = ("results.json", "report.md")


@dataclass(frozen=True)
class DemoConfig:
    """Everything that fixes a demo run (recorded in ``results.json``)."""

    mechanism: str = "mhsa"
    methods: tuple[str, ...] = ("baseline", "at", "iat", "vat")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 50
    lam: float = 1.0
    eps_grid: tuple[float, ...] = (0.25, 1.0, 4.0)
    xi: float = 1e-6
    n_power: int = 1
    attack_eps: float = 4.0
    threads: int = 1


QUICK = DemoConfig(seeds=(0,), steps=3, batch_size=16, warmup=1, eps_grid=(1.0,), methods=METHODS)


def _step_loss(
    method: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    cfg: DemoConfig,
    gen: torch.Generator,
) -> torch.Tensor:
    def run() -> torch.Tensor:
        return model(x)

    def loss_fn(out: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    if method == "baseline":
        return loss_fn(run())
    if method in ("at", "iat"):
        return attention_adversarial_loss(
            model, run, loss_fn, epsilon=eps, lam=cfg.lam, interpretable=method == "iat"
        ).total
    return attention_vat_loss(
        model,
        run,
        loss_fn,
        epsilon=eps,
        lam=cfg.lam,
        xi=cfg.xi,
        n_power=cfg.n_power,
        interpretable=method == "ivat",
        generator=gen,
    ).total


def _train(
    method: str, eps: float, data: TaskData, train: Split, cfg: DemoConfig, seed: int
) -> tuple[nn.Module, float]:
    """AdamW with linear warm-up and cosine decay; the seed fixes init, batch order and VAT noise."""
    torch.manual_seed(seed)
    spec = get_task("digits")
    model, _ = build_model(data, spec.preset("cpu"), cfg.mechanism)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    warm = max(1, min(cfg.warmup, cfg.steps - 1))
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warm, total_iters=warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps - warm)),
        ],
        milestones=[warm],
    )
    gen = torch.Generator().manual_seed(seed)
    n = train["images"].shape[0]
    order, cursor = torch.randperm(n, generator=gen), 0
    start = time.perf_counter()
    model.train()
    for _ in range(cfg.steps):
        if cursor + cfg.batch_size > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        loss = _step_loss(method, model, train["images"][idx], train["labels"][idx], eps, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    return model, time.perf_counter() - start


def _batches(split: Split, size: int = 150) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n = split["images"].shape[0]
    return [(split["images"][i : i + size], split["labels"][i : i + size]) for i in range(0, n, size)]


@torch.no_grad()
def _accuracy(model: nn.Module, split: Split) -> float:
    correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in _batches(split))
    return correct / split["images"].shape[0]


def _ce(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def _attacked_accuracy(model: nn.Module, split: Split, eps: float) -> float:
    """Accuracy when every attention call's scores get AT's worst-case ``r_adv`` of norm ``eps``."""
    correct = 0
    for x, y in _batches(split):
        step = attention_adversarial_loss(model, partial(model, x), partial(_ce, y), epsilon=eps)
        correct += int((step.perturbed_output.argmax(-1) == y).sum())
    return correct / split["images"].shape[0]


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of ``a, b (B, N)``."""
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def _attention_stats(model: nn.Module, split: Split) -> dict[str, float]:
    """Mean row entropy (nats, and over ``log N``) of every attention matrix, and the mean Pearson
    correlation between the last layer's attention received per token and the token's gradient norm."""
    entropies, normalised, corrs = [], [], []
    tokens: list[torch.Tensor] = []
    hook = model.patch.register_forward_hook(lambda m, i, out: tokens.append(out))  # type: ignore[union-attr]
    try:
        for x, _ in _batches(split):
            tokens.clear()
            with attnzoo.capture(model) as cap:
                logits = model(x)
            grad = torch.autograd.grad(logits.gather(1, logits.argmax(-1, keepdim=True)).sum(), tokens[0])[0]
            importance = grad.flatten(2).norm(dim=1)  # (B, N): the patch grid, before any prefix token
            for rec in cap.records:
                h = -torch.special.xlogy(rec.probs, rec.probs).sum(-1)
                entropies.append(float(h.mean()))
                normalised.append(float(h.mean()) / math.log(rec.probs.shape[-1]))
            received = cap.records[-1].probs.mean(dim=(1, 2))[:, -importance.shape[1] :]
            corrs.extend(_pearson(received, importance).tolist())
    finally:
        hook.remove()
    return {
        "entropy": statistics.fmean(entropies),
        "normalised_entropy": statistics.fmean(normalised),
        "attention_gradient_pearson": statistics.fmean(corrs),
    }


def _evaluate(model: nn.Module, seconds: float, val: Split, test: Split, cfg: DemoConfig) -> dict[str, Any]:
    return {
        "val_accuracy": _accuracy(model, val),
        "test_accuracy": _accuracy(model, test),
        "attacked_test_accuracy": _attacked_accuracy(model, test, cfg.attack_eps),
        **_attention_stats(model, test),
        "train_seconds": seconds,
    }


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> dict[str, Any]:
    """Select each method's ``epsilon`` on the validation split (first seed), then train every
    method with it on every seed; returns the results document."""
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise ValueError(f"methods must be among {', '.join(METHODS)}, got {list(cfg.methods)}")
    if not cfg.seeds or not cfg.eps_grid:
        raise ValueError("seeds and eps_grid must not be empty")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    data = get_task("digits").generate("cpu")
    train, val = data.train, data.val
    cache: dict[tuple[str, float, int], dict[str, Any]] = {}

    def result(method: str, eps: float, seed: int) -> dict[str, Any]:
        key = (method, eps, seed)
        if key not in cache:
            model, seconds = _train(method, eps, data, train, cfg, seed)
            cache[key] = {
                "method": method,
                "epsilon": eps,
                "seed": seed,
                **_evaluate(model, seconds, val, data.test, cfg),
            }
            if progress:
                r = cache[key]
                print(
                    f"{method} eps={eps} seed={seed}: val {r['val_accuracy']:.3f} "
                    f"test {r['test_accuracy']:.3f} "
                    f"({r['train_seconds']:.0f} s)",
                    file=sys.stderr,
                )
        return cache[key]

    start, load_before = time.perf_counter(), os.getloadavg()
    chosen: dict[str, float] = {"baseline": 0.0}
    selection = []
    for method in cfg.methods:
        if method == "baseline":
            continue
        trials = [result(method, eps, cfg.seeds[0]) for eps in cfg.eps_grid]
        selection.extend({k: t[k] for k in ("method", "epsilon", "val_accuracy")} for t in trials)
        chosen[method] = max(trials, key=lambda t: (t["val_accuracy"], -t["epsilon"]))["epsilon"]
    runs = [result(m, chosen[m], s) for m in cfg.methods for s in cfg.seeds]
    return {
        "config": asdict(cfg),
        "data": {
            **data.config,
            "train_used": int(train["images"].shape[0]),
            "val": int(val["images"].shape[0]),
        },
        "chosen_epsilon": {m: chosen[m] for m in cfg.methods},
        "selection": selection,
        "runs": runs,
        "meta": {
            "attnzoo": attnzoo.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_before": list(load_before),
            "load_after": list(os.getloadavg()),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds_total": time.perf_counter() - start,
        },
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m attnzoo.training.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: one seed, 3 steps, every method")
    p.add_argument("--mechanism", help="softmax token mixer of the ViT (default: mhsa)")
    p.add_argument(
        "--methods", help=f"comma-separated, among {','.join(METHODS)} (default: baseline,at,iat,vat)"
    )
    p.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--steps", type=int, help="training steps per run (default: 600)")
    p.add_argument(
        "--eps-grid", help="comma-separated epsilons to choose from on validation (default: 0.25,1,4)"
    )
    p.add_argument("--out", help="output folder, replaced (e.g. reports/training/digits_mhsa)")
    p.add_argument(
        "--runs", default="reports/training/runs", help="parent of the new run folder (default: %(default)s)"
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m attnzoo.training.demo``."""
    args = _parse(argv)
    cfg = QUICK if args.quick else DemoConfig()
    changes: dict[str, Any] = {}
    if args.mechanism:
        changes["mechanism"] = args.mechanism
    if args.methods:
        changes["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.seeds:
        changes["seeds"] = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.eps_grid:
        changes["eps_grid"] = tuple(float(e) for e in args.eps_grid.split(",") if e.strip())
    try:
        doc = run_demo(replace(cfg, **changes), progress=not args.no_progress)
    except ValueError as exc:
        print(f"attnzoo.training.demo: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else new_run_dir(Path(args.runs))
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "attnzoo.training.demo", *(sys.argv[1:] if argv is None else argv)])
    text = report_markdown(doc, command)
    written = [out / "results.json", out / "report.md"]
    written[0].write_text(json.dumps({**doc, "command": command}, indent=1) + "\n")
    written[1].write_text(text)
    replace_outputs(out, written, PRODUCED)
    print(text)
    print(f"wrote {written[0]} and {written[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
