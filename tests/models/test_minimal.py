"""models.minimal: the reduced blocks of Bermeitinger et al. 2024. Parameter formulas equal the modules'
counts for every option and variant; MLP-free variants have no MLP; the ViT, the LM and the
``attnzoo eval`` arguments build exactly these blocks."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

import attnzoo
from attnzoo.models.minimal import (
    VARIANTS,
    attention_parameters,
    block_parameters,
    build_lm,
    build_vit,
    eval_arguments,
    minimal_block,
    parameter_table,
    variant_settings,
)
from attnzoo.tasks.catalog import get_task
from attnzoo.tasks.cli import parse_mechanism_kwargs
from attnzoo.tasks.runner import build_model


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_parameters_equal_the_module(heads: int) -> None:
    for qk, value_proj, out_proj, bias in itertools.product(
        ("separate", "merged", "shared"), (True, False), (True, False), (True, False)
    ):
        options = {"qk": qk, "value_proj": value_proj, "out_proj": out_proj, "qkv_bias": bias}
        module = attnzoo.create("minimal_attention", dim=16, num_heads=heads, **options)
        assert attention_parameters(16, heads, **options) == _count(module), options


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mlp_ratio", [2.0, 1.5])
def test_block_parameters_equal_the_block(variant: str, mlp_ratio: float) -> None:
    block = minimal_block(24, 4, variant=variant, mlp_ratio=mlp_ratio)
    assert block_parameters(24, 4, variant=variant, mlp_ratio=mlp_ratio) == _count(block)
    assert (block.mlp is not None) == VARIANTS[variant][1]
    x = torch.randn(2, 5, 24)
    assert block(x).shape == x.shape


def test_parameter_table_savings() -> None:
    rows = {r["variant"]: r for r in parameter_table(64, 4)}
    assert list(rows) == list(VARIANTS)
    assert rows["standard"]["saving"] == 0.0
    c = 64
    # MLP (2 C^2 r + ...) and its LayerNorm go; the attention stays 4 C^2 + 2 C
    assert rows["no-mlp"]["block"] == 4 * c * c + c + 2 * c
    # merged with h = 4 heads is larger than separate (4 C^2 against 2 C^2); with one head it is one
    # C x C matrix, the size of W_q alone
    assert rows["merged"]["attention"] == rows["no-mlp"]["attention"] + 2 * c * c
    assert rows["merged-1head"]["attention"] == rows["no-mlp"]["attention"] - c * c
    assert rows["shared"]["attention"] == rows["no-mlp"]["attention"] - c * c
    assert rows["minimal"]["attention"] == c * c  # one shared query/key matrix, nothing else
    # standard block: attention 4 C^2 + C, two LayerNorms 4 C, MLP (hidden 2 C) 4 C^2 + 3 C
    assert rows["standard"]["block"] == 8 * c * c + 8 * c
    assert rows["minimal"]["block"] == c * c + 2 * c
    assert rows["minimal"]["saving"] == pytest.approx(1 - (c * c + 2 * c) / (8 * c * c + 8 * c))
    for name, row in rows.items():
        assert row["saving"] == pytest.approx(1 - row["block"] / rows["standard"]["block"]), name


def test_causal_block_is_causal() -> None:
    torch.manual_seed(0)
    block = minimal_block(16, 2, variant="minimal", causal=True)
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, 4:] += 1.0
    torch.testing.assert_close(block(x)[:, :4], block(y)[:, :4])


def test_vit_and_lm_build_the_variant_blocks() -> None:
    vit = build_vit("minimal", image_size=(8, 8), patch_size=2, in_chans=1, num_classes=10, dim=32, depth=2)
    lm = build_lm("no-vo", vocab_size=11, dim=32, depth=2, max_len=16)
    for model, variant in ((vit, "minimal"), (lm, "no-vo")):
        blocks = [m for m in model.modules() if isinstance(m, attnzoo.models.blocks.MixerBlock)]
        assert len(blocks) == 2
        for block in blocks:
            assert block.mlp is None
            assert _count(block) == block_parameters(32, 4, variant=variant)
    assert vit(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert build_lm("standard", vocab_size=11, dim=32, depth=1, max_len=16).blocks[0].mlp is not None


@pytest.mark.parametrize("variant", ["standard", "merged-1head", "minimal"])
def test_eval_arguments_build_the_same_model(variant: str) -> None:
    args = eval_arguments(variant)
    assert args[:2] == ["--mechanisms", "minimal_attention"]
    options = dict(zip(args[2::2], args[3::2]))
    raw = options.get("--mechanism-kwargs")
    overrides = parse_mechanism_kwargs([raw])["minimal_attention"] if raw else None
    model_kwargs = json.loads(options.get("--model-kwargs", "{}"))
    spec = get_task("digits")
    preset = spec.preset("tiny")
    preset = dataclasses.replace(preset, model={**preset.model, **model_kwargs})
    data = spec.generate("tiny", seed=0)
    model, _ = build_model(data, preset, "minimal_attention", overrides)
    want = build_vit(
        variant,
        image_size=(8, 8),
        patch_size=preset.model["patch_size"],
        in_chans=1,
        num_classes=10,
        dim=preset.model["width"],
        depth=preset.model["depth"],
        mlp_ratio=spec.preset("tiny").model["mlp_ratio"],
    )
    assert _count(model) == _count(want)


def test_unknown_variant_is_named() -> None:
    with pytest.raises(ValueError, match="variant"):
        variant_settings("tiny")
    with pytest.raises(ValueError, match="mlp_ratio"):
        minimal_block(16, variant="standard", mlp_ratio=0)
