"""Addition prompts, arithmetic heads and precise fine-tuning (only the chosen heads change)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.analysis.circuit_helpers import random_lm

from attnzoo.analysis.arithmetic import (
    addition_prompts,
    arithmetic_heads,
    exact_match,
    precise_finetune,
    precise_masks,
    split_pairs,
)
from attnzoo.analysis.templates import default_vocab, training_data
from attnzoo.models.train_lm import tiny_lm, train_lm
from attnzoo.tasks.catalog import Budget


def test_addition_prompts_spell_the_sum_and_the_counterfactual() -> None:
    vocab = default_vocab()
    prompts = addition_prompts(np.array([[37, 48], [5, 95]]), vocab=vocab, seed=0)
    assert vocab.decode(prompts.clean[0]) == ["3", "7", "+", "4", "8", "=", "0", "8"]
    assert vocab.decode(prompts.correct[0]) == ["0", "8", "5"]
    assert vocab.decode(prompts.correct[1]) == ["1", "0", "0"]
    b = int("".join(vocab.decode(prompts.corrupt[0][3:5])))
    assert b != 48 and vocab.decode(prompts.wrong[0]) == list(f"{37 + b:03d}")
    assert prompts.valid.eq(prompts.correct != prompts.wrong).all() and prompts.valid.any(-1).all()
    assert prompts.positions[0].tolist() == [5, 6, 7]
    train, test = split_pairs(50, 20, seed=1)
    assert not {tuple(p) for p in train} & {tuple(p) for p in test}
    with pytest.raises(ValueError, match="pairs"):
        addition_prompts(np.array([[100, 1]]))


def test_arithmetic_heads_rank_by_the_result_position_patch() -> None:
    model = random_lm(depth=2, heads=4, dim=16)
    prompts = addition_prompts(split_pairs(12, 1, seed=0)[0], seed=0)
    found = arithmetic_heads(model, prompts, fraction=0.25, min_effect=0.0)
    assert found.result_patch.shape == found.operand_patch.shape == found.ablation.shape == (2, 4)
    assert len(found.selected) == 2 and found.selected == [h for h, _ in found.ranking[:2]]
    assert abs(found.ranking[0][1]) == pytest.approx(float(found.result_patch.abs().max()))
    assert found.mlp_patch.shape == (2,) and found.selected_mlps == [int(found.mlp_patch.abs().argmax())]
    assert 0.0 <= exact_match(model, prompts) <= 1.0


def test_precise_finetuning_changes_only_the_chosen_heads() -> None:
    vocab = default_vocab()
    train_pairs, test_pairs = split_pairs(64, 16, seed=0)
    data = training_data([addition_prompts(train_pairs)], [addition_prompts(test_pairs)], vocab=vocab)
    model = tiny_lm(len(vocab), data.meta["seq_len"], dim=16, depth=2, num_heads=2)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = precise_masks(model, [(1, 0)])
    precise_finetune(model, [(1, 0)], data, Budget(steps=3, batch_size=16, lr=1e-2, warmup=0, eval_every=3))
    after = model.state_dict()
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: m for p, m in masks.items()}
    assert set(by_name) == {
        "blocks.1.mixer.qkv.weight",
        "blocks.1.mixer.qkv.bias",
        "blocks.1.mixer.proj.weight",
    }
    for name, value in before.items():
        mask = by_name.get(name, torch.zeros_like(value, dtype=torch.bool))
        assert torch.equal(after[name][~mask], value[~mask]), name
        if name in by_name:
            assert not torch.equal(after[name][mask], value[mask]), name
    assert int(by_name["blocks.1.mixer.qkv.weight"].sum()) == 3 * 8 * 16  # q, k, v rows of one head
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="at least one head"):
        precise_masks(model, [])
    with pytest.raises(ValueError, match="out of range"):
        precise_masks(model, [(0, 9)])


def test_training_is_deterministic_for_a_seed() -> None:
    vocab = default_vocab()
    pairs = split_pairs(48, 16, seed=0)
    data = training_data([addition_prompts(pairs[0])], [addition_prompts(pairs[1])], vocab=vocab)
    budget = Budget(steps=4, batch_size=8, lr=1e-3, warmup=1, eval_every=2)
    runs = []
    for _ in range(2):
        model = tiny_lm(len(vocab), data.meta["seq_len"], dim=16, depth=1, num_heads=2, seed=3)
        history = train_lm(model, data, budget, seed=5)
        runs.append((model.state_dict(), [(h["step"], h["loss"], h["accuracy"]) for h in history]))
    assert runs[0][1] == runs[1][1]
    for key, value in runs[0][0].items():
        assert torch.equal(value, runs[1][0][key]), key
