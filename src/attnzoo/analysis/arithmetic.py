"""Arithmetic heads and precise fine-tuning (Zhang et al., "Interpreting and Improving Large Language
Models in Arithmetic Calculation", ICML 2024, arXiv 2409.01659).

Zhang et al. find that a small fraction (< 5%) of the attention heads of an LLM carry its arithmetic:
knocking them out destroys the calculation, and patching them with a counterfactual calculation
moves the answer. The heads attend to the operands and the operator; the MLPs after them compute
the result. Fine-tuning only those components ("precise SFT") improves arithmetic without the
forgetting of full fine-tuning. attnzoo provides:

* :func:`addition_prompts`: ``a1 a2 + b1 b2 = r1 r2 r3`` (digits, the sum zero-padded to three
  digits), scored at the three result positions with teacher forcing; the counterfactual changes
  the second operand, and ``valid`` marks the result digits that then differ.
* :func:`arithmetic_heads`: per head, the normalised effect of patching its output from the
  counterfactual run at the result positions and at the operand positions
  (:func:`~attnzoo.analysis.patching.activation_patching`, noising) and of mean-ablating it
  (mean over the counterfactual prompts); heads are ranked by the result-position patching effect.
* :func:`precise_finetune`: train only the chosen heads (their query/key/value rows and output
  projection columns, :func:`~attnzoo.analysis.hooks.head_parameter_masks`), and optionally
  whole MLPs, with :func:`~attnzoo.models.train_lm.train_lm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from attnzoo.analysis.hooks import attention_layers, head_parameter_masks
from attnzoo.analysis.metrics import MetricCard, register_metric
from attnzoo.analysis.patching import (
    Head,
    activation_patching,
    cache_sites,
    logit_difference,
    prompt_accuracy,
    run_edited,
)
from attnzoo.analysis.templates import ContrastPrompts, WordVocab, default_vocab
from attnzoo.checks import check_float, check_int
from attnzoo.models.train_lm import train_lm
from attnzoo.tasks.catalog import Budget
from attnzoo.tasks.data import TaskData

__all__ = [
    "ArithmeticHeads",
    "addition_prompts",
    "arithmetic_heads",
    "exact_match",
    "precise_finetune",
    "precise_masks",
    "split_pairs",
]

OPERAND_POSITIONS = (0, 1, 3, 4)
RESULT_POSITIONS = (5, 6, 7)


def addition_prompts(pairs: np.ndarray, *, vocab: WordVocab | None = None, seed: int = 0) -> ContrastPrompts:
    """Prompts ``a1 a2 + b1 b2 = r1 r2`` for the operand ``pairs (S, 2)`` (ints in ``[0, 100)``),
    scored where ``r1``, ``r2``, ``r3`` are predicted; the corrupted prompt replaces ``b`` by another
    random operand (and carries its own sum)."""
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.min() < 0 or pairs.max() > 99:
        raise ValueError(f"pairs must be (S, 2) ints in [0, 100), got shape {pairs.shape}")
    vocab = vocab or default_vocab()
    rng = np.random.default_rng(seed)
    other = (pairs[:, 1] + rng.integers(1, 100, len(pairs))) % 100

    def rows(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        words = [[*f"{x:02d}", "+", *f"{y:02d}", "=", *f"{x + y:03d}"] for x, y in zip(a, b)]
        ids = torch.tensor([vocab.encode(w) for w in words])
        return ids[:, :-1], ids[:, -3:]

    clean, correct = rows(pairs[:, 0], pairs[:, 1])
    corrupt, wrong = rows(pairs[:, 0], other)
    positions = torch.tensor(RESULT_POSITIONS).expand(len(pairs), -1).clone()
    roles = {f"pos{p}": torch.full((len(pairs),), p) for p in range(clean.shape[1])}
    return ContrastPrompts("addition", clean, corrupt, positions, correct, wrong, correct != wrong, roles)


def split_pairs(num_train: int, num_test: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train and test operand pairs drawn from the 10,000 pairs of two-digit numbers."""
    num_train = check_int(num_train, "num_train")
    num_test = check_int(num_test, "num_test")
    if num_train + num_test > 10_000:
        raise ValueError(f"num_train + num_test must be <= 10000, got {num_train + num_test}")
    order = np.random.default_rng(seed).permutation(10_000)
    grid = np.stack([order // 100, order % 100], 1)
    return grid[:num_train], grid[num_train : num_train + num_test]


def exact_match(model: nn.Module, prompts: ContrastPrompts) -> float:
    """Share of prompts whose every scored position (valid or not) predicts ``correct``."""
    every = ContrastPrompts(
        prompts.name, prompts.clean, prompts.corrupt, prompts.positions, prompts.correct, prompts.wrong,
        torch.ones_like(prompts.valid),
    )  # fmt: skip
    logits = run_edited(model, prompts.clean, attention_layers(model))
    return float(prompt_accuracy(logits, every).float().mean())


@dataclass
class ArithmeticHeads:
    """Per-head effects ``(layers, heads)`` and the ranking.

    Attributes:
        result_patch: normalised effect of patching the head's output at the result positions.
        operand_patch: the same at the operand positions.
        ablation: normalised effect of mean-ablating the head at every position.
        mlp_patch: ``(layers,)`` normalised effect of patching each block's MLP output at the
            result positions.
        ranking: heads by ``|result_patch|``, largest first, with their effect.
        selected: the heads kept (see :func:`arithmetic_heads`).
        selected_mlps: the block of largest ``|mlp_patch|`` (a one-element list), for precise SFT.
    """

    result_patch: torch.Tensor
    operand_patch: torch.Tensor
    ablation: torch.Tensor
    mlp_patch: torch.Tensor
    ranking: list[tuple[Head, float]]
    selected: list[Head]
    selected_mlps: list[int]

    def to_dict(self) -> dict[str, Any]:
        def rows(t: torch.Tensor) -> list[list[float]]:
            return [[round(v, 5) for v in r] for r in t.tolist()]

        return {
            "result_patch": rows(self.result_patch),
            "operand_patch": rows(self.operand_patch),
            "ablation": rows(self.ablation),
            "mlp_patch": [round(v, 5) for v in self.mlp_patch.tolist()],
            "ranking": [[i, h, round(e, 5)] for (i, h), e in self.ranking],
            "selected": [list(h) for h in self.selected],
            "selected_mlps": self.selected_mlps,
        }


def _position_mask(prompts: ContrastPrompts, positions: Sequence[int]) -> torch.Tensor:
    mask = torch.zeros_like(prompts.clean, dtype=torch.bool)
    mask[:, list(positions)] = True
    return mask


def mean_ablation_effects(model: nn.Module, prompts: ContrastPrompts) -> torch.Tensor:
    """``(layers, heads)``: ``(m_ablated - m_clean) / (m_clean - m_corrupt)`` with one head's output
    replaced by its mean over the corrupted prompts (per position)."""
    layers = attention_layers(model)
    cache, _ = cache_sites(model, prompts.corrupt, layers, ["z"])
    clean = float(logit_difference(run_edited(model, prompts.clean, layers), prompts).mean())
    corrupt = float(logit_difference(run_edited(model, prompts.corrupt, layers), prompts).mean())
    out = torch.full((len(layers), max(ly.num_heads for ly in layers)), float("nan"))
    for ly in layers:
        mean = cache[(ly.index, "z")].mean(0, keepdim=True)
        for h in range(ly.num_heads):

            def edit(x: torch.Tensor, h: int = h, mean: torch.Tensor = mean) -> torch.Tensor:
                x = x.clone()
                x[:, :, h] = mean[:, :, h]
                return x

            logits = run_edited(model, prompts.clean, layers, {(ly.index, "z"): edit})
            out[ly.index, h] = (float(logit_difference(logits, prompts).mean()) - clean) / (clean - corrupt)
    return out


def mlp_patch_effects(model: nn.Module, prompts: ContrastPrompts, positions: Sequence[int]) -> torch.Tensor:
    """``(layers,)``: normalised effect of patching each block's MLP output from the corrupted run at
    ``positions`` into the clean run (NaN for a block without MLP)."""
    layers = attention_layers(model)
    _, source = cache_sites(model, prompts.corrupt, layers, [], mlps=True)
    clean = float(logit_difference(run_edited(model, prompts.clean, layers), prompts).mean())
    corrupt = float(logit_difference(run_edited(model, prompts.corrupt, layers), prompts).mean())
    where = _position_mask(prompts, positions)[..., None]
    out = torch.full((len(layers),), float("nan"))
    for i, value in source.items():
        edit = {i: lambda x, v=value: torch.where(where, v, x)}
        logits = run_edited(model, prompts.clean, layers, mlp_edits=edit)
        out[i] = (float(logit_difference(logits, prompts).mean()) - clean) / (clean - corrupt)
    return out


def arithmetic_heads(
    model: nn.Module,
    prompts: ContrastPrompts,
    *,
    fraction: float = 0.05,
    min_effect: float = 0.05,
    progress: bool = False,
) -> ArithmeticHeads:
    """Rank the heads by how much of the addition they carry and keep the top ones.

    Args:
        fraction: keep at most this share of all heads (rounded down, at least one).
        min_effect: and only heads whose ``|result_patch|`` effect is at least this.
    """
    fraction = check_float(fraction, "fraction", positive=True)
    min_effect = check_float(min_effect, "min_effect", minimum=0.0)
    result, operand = (
        activation_patching(
            model, prompts, direction="noising", positions=_position_mask(prompts, where), progress=progress
        )
        for where in (RESULT_POSITIONS, OPERAND_POSITIONS)
    )
    ablation = mean_ablation_effects(model, prompts)
    mlps = mlp_patch_effects(model, prompts, RESULT_POSITIONS)
    ranking = result.ranking()
    cap = max(1, int(fraction * len(ranking)))
    selected = [h for h, e in ranking[:cap] if abs(e) >= min_effect] or [ranking[0][0]]
    top_mlp = [int(mlps.nan_to_num(0).abs().argmax())] if not bool(mlps.isnan().all()) else []
    return ArithmeticHeads(result.effect, operand.effect, ablation, mlps, ranking, selected, top_mlp)


def precise_masks(
    model: nn.Module, heads: Sequence[Head], mlps: Sequence[int] = ()
) -> dict[nn.Parameter, torch.Tensor]:
    """The trainable entries of precise fine-tuning: ``heads``' query/key/value rows and output
    columns (:func:`~attnzoo.analysis.hooks.head_parameter_masks`) and every weight of the MLPs of
    the blocks of attention layers ``mlps``.

    Raises:
        ValueError: no head given, or a layer without an MLP module.
    """
    if not heads:
        raise ValueError("precise fine-tuning needs at least one head")
    masks = head_parameter_masks(model, heads)
    layers = attention_layers(model)
    for i in mlps:
        if not 0 <= i < len(layers) or not isinstance(layers[i].mlp, nn.Module):
            raise ValueError(f"attention layer {i} has no MLP module to fine-tune")
        for p in layers[i].mlp.parameters():
            masks[p] = torch.ones_like(p, dtype=torch.bool)
    return masks


def precise_finetune(
    model: nn.Module,
    heads: Sequence[Head],
    data: TaskData,
    budget: Budget,
    *,
    mlps: Sequence[int] = (),
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Fine-tune only ``heads`` (and the MLPs of the blocks of attention layers ``mlps``) on ``data``
    (:func:`precise_masks`); every other weight stays bit-identical. Returns :func:`train_lm`'s history."""
    masks = precise_masks(model, heads, mlps)
    return train_lm(model, data, budget, seed=seed, masks=masks, progress=progress, desc="precise SFT")


register_metric(
    MetricCard(
        name="arithmetic_heads",
        summary="Heads that carry addition: patching effect at the result and operand positions, ablation.",
        definition="result_patch(l, h) = (m(clean with z(l, h) := z(l, h)(counterfactual) at the result "
        "positions) - m_clean) / (m_clean - m_counterfactual); the same at the operand positions; "
        "ablation: z(l, h) := mean over the counterfactual prompts",
        paper="Zhang et al., Interpreting and Improving Large Language Models in Arithmetic Calculation "
        "(ICML 2024)",
        arxiv="2409.01659",
        output="ArithmeticHeads",
        fn=arithmetic_heads,
        defaults=MappingProxyType({"fraction": 0.05, "min_effect": 0.05}),
        notes=(
            "Zhang et al. path-patch heads of LLaMA-family models on prompts with one- and two-digit "
            "operands; attnzoo patches head outputs at the result (or operand) positions of its "
            "two-digit addition prompts, with the second operand changed as the counterfactual.",
            "Precise SFT in the paper tunes the key heads and MLPs; precise_finetune tunes the chosen "
            "heads' q/k/v rows and output columns (the output bias is shared and stays frozen), plus "
            "the MLPs named in mlps.",
        ),
    )
)
