"""Train (or fine-tune part of) a given causal LM on a sequence task, deterministically for a seed.

:func:`attnzoo.tasks.train_one` builds its own backbone for a mechanism comparison; the analyses
need the trained model itself, and precise fine-tuning needs to train only some entries of some
parameters. :func:`train_lm` trains the model it is given, with the runner's loss, schedule and
evaluation (:mod:`attnzoo.tasks.runner`), optionally restricted by boolean ``masks``::

    model = tiny_lm(data.meta["vocab_size"], data.meta["seq_len"])
    history = train_lm(model, data, Budget(steps=1500, batch_size=64, lr=3e-3), seed=0)

With ``masks = {parameter: bool tensor}``, only the True entries of those parameters change: their
gradients are masked, they get no weight decay, and every other parameter is frozen (Adam moves an
entry with a zero gradient from zero moments by exactly zero).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from attnzoo.models.lm import CausalLM
from attnzoo.tasks.catalog import Budget
from attnzoo.tasks.data import TaskData
from attnzoo.tasks.runner import _batch, _loss_and_correct, _lr_at, evaluate

__all__ = ["tiny_lm", "train_lm"]


def tiny_lm(
    vocab_size: int, max_len: int, *, dim: int = 64, depth: int = 2, num_heads: int = 4, seed: int = 0
) -> CausalLM:
    """The analyses' small transformer: :class:`CausalLM` with ``mhsa`` (``num_heads`` heads),
    learned positions and an MLP of ratio 4 in every block, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CausalLM(
            vocab_size, dim, depth, "mhsa", max_len=max_len, mlp_ratio=4.0,
            mixer_overrides={"num_heads": num_heads},
        )  # fmt: skip


def _optimizer(
    model: nn.Module, budget: Budget, masks: Mapping[nn.Parameter, torch.Tensor] | None
) -> torch.optim.Optimizer:
    if masks is None:
        decay = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for p in model.parameters() if p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": budget.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=budget.lr)
    own = {id(p) for p in model.parameters()}
    for param, mask in masks.items():
        if id(param) not in own:
            raise ValueError("masks name a parameter that is not the model's")
        if mask.shape != param.shape or mask.dtype != torch.bool:
            raise ValueError(f"a mask must be bool of its parameter's shape {tuple(param.shape)}")
    return torch.optim.AdamW(list(masks), lr=budget.lr, weight_decay=0.0)


def train_lm(
    model: nn.Module,
    data: TaskData,
    budget: Budget,
    *,
    seed: int = 0,
    masks: Mapping[nn.Parameter, torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> list[dict[str, Any]]:
    """Train ``model`` (a :class:`CausalLM`: ``hidden`` and ``head``) on ``data`` under ``budget``.

    Args:
        seed: fixes the batch order (the model's initialisation is the caller's).
        masks: train only these entries (see the module docstring); ``None`` trains everything.
        progress: show a tqdm bar.

    Returns:
        the history ``[{step, loss, accuracy, seconds}]`` (test accuracy every ``eval_every`` steps
        and at the end); training stops early once ``budget.target`` is reached.
    """
    if data.kind != "sequence":
        raise ValueError(f"train_lm trains causal LMs on sequence tasks, got a {data.kind!r} task")
    opt = _optimizer(model, budget, masks)
    hooks = [p.register_hook(lambda g, m=m: g * m.to(g.dtype)) for p, m in (masks or {}).items()]
    frozen = [] if masks is None else [p for p in model.parameters() if p not in masks and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    n = data.size("train")
    order, cursor = torch.randperm(n, generator=gen), 0
    history: list[dict[str, Any]] = []
    running, start = 0.0, time.perf_counter()
    model.train()
    try:
        for step in tqdm(range(budget.steps), desc=desc, disable=not progress, leave=False):
            if cursor + budget.batch_size > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor : cursor + budget.batch_size]
            cursor += budget.batch_size
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, budget)
            loss, _, _ = _loss_and_correct(model, "sequence", _batch(data.train, idx))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            running = loss.item() if step == 0 else 0.9 * running + 0.1 * loss.item()
            done = step + 1
            if done % budget.eval_every == 0 or done == budget.steps:
                acc = evaluate(model, data)
                history.append(
                    {"step": done, "loss": running, "accuracy": acc, "seconds": time.perf_counter() - start}
                )
                if budget.target is not None and acc >= budget.target:
                    break
    finally:
        for h in hooks:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
    return history
