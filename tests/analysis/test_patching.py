"""Activation and path patching: against TransformerLens' patching helpers and hand-computed patches."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from tests.analysis.circuit_helpers import random_lm, tiny_gpt2

from attnzoo.analysis.hooks import attention_layers
from attnzoo.analysis.patching import (
    activation_patching,
    cache_sites,
    logit_difference,
    path_patching,
    run_edited,
)
from attnzoo.analysis.templates import ContrastPrompts, colored_objects_prompts, default_vocab, ioi_prompts


def _metric(prompts: ContrastPrompts) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: logit_difference(logits, prompts).mean()


@pytest.mark.parametrize("site", ["z", "q", "k", "v"])
def test_activation_patching_equals_transformer_lens(site: str) -> None:
    tl_patching = pytest.importorskip("transformer_lens.patching")
    from attnzoo.analysis.tl import to_transformer_lens

    model = random_lm()
    bridge = to_transformer_lens(model)
    prompts = ioi_prompts(6, seed=1)
    torch.testing.assert_close(bridge(prompts.clean), model(prompts.clean), atol=1e-5, rtol=1e-5)
    _, clean_cache = bridge.run_with_cache(prompts.clean)
    helper = {
        "z": tl_patching.get_act_patch_attn_head_out_all_pos,
        "q": tl_patching.get_act_patch_attn_head_q_all_pos,
        "k": tl_patching.get_act_patch_attn_head_k_all_pos,
        "v": tl_patching.get_act_patch_attn_head_v_all_pos,
    }[site]
    reference = helper(bridge, prompts.corrupt, clean_cache, _metric(prompts))
    ours = activation_patching(model, prompts, site=site)
    on_bridge = activation_patching(bridge, prompts, site=site)  # attnzoo through TL's hook points
    torch.testing.assert_close(ours.patched, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(on_bridge.patched, reference, atol=1e-5, rtol=1e-4)
    assert ours.effect.abs().max() > 1e-3  # the patches do move the metric


@pytest.mark.parametrize("site", ["q", "k", "v"])
def test_path_patching_with_frozen_mlps_equals_transformer_lens_direct_path(site: str) -> None:
    tl_patching = pytest.importorskip("transformer_lens.patching")
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    vocab = default_vocab()
    model = tiny_gpt2(len(vocab))
    twin = copy.deepcopy(model)
    bridge = build_bridge_from_module(twin, "GPT2LMHeadModel", hf_config=twin.config).eval()
    prompts = ioi_prompts(6, seed=2)
    _, clean_cache = bridge.run_with_cache(prompts.clean)
    _, corrupt_cache = bridge.run_with_cache(prompts.corrupt)
    for sender in (0, 3):
        reference = tl_patching.get_act_patch_direct_path(
            bridge, prompts.corrupt, clean_cache, corrupt_cache, _metric(prompts), 0, sender,
            component=site, verbose=False,
        )  # fmt: skip
        for receiver in (1, 2):
            ours = path_patching(
                model, prompts, receivers=[(1, receiver)], receiver_site=site, senders=[(0, sender)],
                freeze_mlps=True, direction="denoising",
            )  # fmt: skip
            torch.testing.assert_close(ours.patched[0, sender], reference[1, receiver], atol=1e-5, rtol=1e-4)


def test_path_patching_to_logits_with_frozen_mlps_is_the_senders_direct_write() -> None:
    """By hand: frozen heads and MLPs leave the base run's final residual plus the sender's change
    of output, (z_source - z_base)[head] @ W_O[:, head]."""
    model = random_lm(depth=2, heads=2, dim=16)
    prompts = colored_objects_prompts(5, seed=3)
    layers = attention_layers(model)
    base_z, _ = cache_sites(model, prompts.clean, layers, ["z"])
    source_z, _ = cache_sites(model, prompts.corrupt, layers, ["z"])
    final: dict[str, torch.Tensor] = {}
    handle = model.norm.register_forward_pre_hook(lambda m, args: final.setdefault("resid", args[0]))
    with torch.no_grad():
        model(prompts.clean)
    handle.remove()
    result = path_patching(model, prompts, freeze_mlps=True)
    d = 8
    for layer in range(2):
        proj = model.blocks[layer].mixer.proj
        for head in range(2):
            delta = (source_z[(layer, "z")] - base_z[(layer, "z")])[:, :, head] @ proj.weight[
                :, head * d : (head + 1) * d
            ].T
            with torch.no_grad():
                logits = model.head(model.norm(final["resid"] + delta))
            expected = logit_difference(logits, prompts).mean()
            torch.testing.assert_close(result.patched[layer, head], expected, atol=1e-5, rtol=1e-4)


def test_path_patching_recomputes_mlps_by_default() -> None:
    model = random_lm()
    prompts = ioi_prompts(5, seed=4)
    frozen = path_patching(model, prompts, freeze_mlps=True)
    recomputed = path_patching(model, prompts)
    assert not torch.allclose(frozen.patched[0], recomputed.patched[0])  # layer-0 heads feed MLPs
    assert frozen.direction == "noising" and frozen.site == "logits"


def test_patching_a_site_with_its_own_values_changes_nothing() -> None:
    model = random_lm()
    prompts = ioi_prompts(4, seed=5)
    layers = attention_layers(model)
    cache, _ = cache_sites(model, prompts.clean, layers, ["q", "k", "v", "z"])
    edits = {key: (lambda v: lambda x: v)(value) for key, value in cache.items()}
    torch.testing.assert_close(
        run_edited(model, prompts.clean, layers, edits), run_edited(model, prompts.clean, layers)
    )


def test_senders_without_a_path_are_nan_and_receivers_are_checked() -> None:
    model = random_lm()
    prompts = ioi_prompts(4, seed=6)
    result = path_patching(model, prompts, receivers=[(0, 1)], receiver_site="k")
    assert result.patched.isnan().all()  # no head sits before layer 0
    with pytest.raises(ValueError, match="receiver"):
        path_patching(model, prompts, receivers=[(5, 0)])
    with pytest.raises(ValueError, match="receiver_site"):
        path_patching(model, prompts, receivers=[(1, 0)], receiver_site="z")
    with pytest.raises(ValueError, match="direction"):
        activation_patching(model, prompts, direction="sideways")  # type: ignore[arg-type]


def test_clean_equal_to_corrupt_is_refused() -> None:
    model = random_lm()
    prompts = ioi_prompts(4, seed=7)
    prompts.corrupt = prompts.clean.clone()
    with pytest.raises(ValueError, match="same logit difference"):
        activation_patching(model, prompts)


def test_patching_is_deterministic_and_positions_restrict_the_patch() -> None:
    model = random_lm()
    prompts = ioi_prompts(6, seed=8)
    a = activation_patching(model, prompts, site="v")
    b = activation_patching(model, prompts, site="v")
    torch.testing.assert_close(a.patched, b.patched, rtol=0, atol=0)
    nowhere = torch.zeros_like(prompts.clean, dtype=torch.bool)
    none = activation_patching(model, prompts, site="v", positions=nowhere)
    torch.testing.assert_close(none.patched, torch.full_like(none.patched, none.corrupt))
    assert a.ranking()[0][1] == max((e for _, e in a.ranking()), key=abs)


def test_hf_gqa_keys_are_patched_per_key_value_head(tiny_llama: torch.nn.Module) -> None:
    prompts = ioi_prompts(4, seed=9)  # template ids < 64; the tiny Llama has 50 tokens
    prompts.clean, prompts.corrupt = prompts.clean % 50, prompts.corrupt % 50
    prompts.correct, prompts.wrong = prompts.correct % 50, prompts.wrong % 50
    k = activation_patching(tiny_llama, prompts, site="k")
    z = activation_patching(tiny_llama, prompts, site="z")
    assert k.patched.shape == (2, 2) and z.patched.shape == (2, 4)
    assert not k.patched.isnan().any()
