"""Per-head hook sites: which models they find, the errors on others, and the weight slices they own."""

from __future__ import annotations

import pytest
import torch
from tests.analysis.circuit_helpers import random_lm, tiny_gpt2

import attnzoo
from attnzoo.analysis.hooks import HookError, attention_layers, head_hooks, head_parameter_masks, logits_of
from attnzoo.analysis.patching import cache_sites, path_patching
from attnzoo.analysis.templates import default_vocab, ioi_prompts
from attnzoo.models import CausalLM


def test_causal_lm_sites_are_the_heads_of_qkv_and_proj() -> None:
    model = random_lm(heads=2, dim=16)
    layers = attention_layers(model)
    assert [ly.name for ly in layers] == ["blocks.0.mixer", "blocks.1.mixer"]
    assert (layers[0].num_heads, layers[0].head_dim) == (2, 8)
    assert layers[1].mlp is model.blocks[1].mlp
    tokens = torch.randint(0, len(default_vocab()), (2, 7))
    cache, _ = cache_sites(model, tokens, layers, ["q", "z"])
    x = model.blocks[0].norm1(model.embed(tokens) + model.pos[:, :7])
    q = model.blocks[0].mixer.qkv(x)[..., :16].unflatten(-1, (2, 8))
    torch.testing.assert_close(cache[(0, "q")], q)
    assert cache[(1, "z")].shape == (2, 7, 2, 8)


def test_zeroing_a_heads_weights_equals_zeroing_its_sites() -> None:
    """head_parameter_masks and the hooks agree on which features belong to a head (GPT-2's fused
    Conv1D projections, stored (in, out), and attnzoo's Linear ones)."""
    vocab = default_vocab()
    tokens = torch.randint(0, len(vocab), (2, 6))
    for model in (tiny_gpt2(len(vocab)), random_lm(heads=2)):
        layers = attention_layers(model)
        for site in ("q", "z"):
            with (
                torch.no_grad(),
                head_hooks(
                    model, {(1, site): lambda x: torch.cat([x[:, :, :1], 0 * x[:, :, 1:2], x[:, :, 2:]], 2)}
                ),
            ):
                hooked = logits_of(model, tokens)
            masks = head_parameter_masks(model, [(1, 1)], sites=[site])
            saved = {p: p.detach().clone() for p in masks}
            with torch.no_grad():
                for p, m in masks.items():
                    p[m] = 0
                zeroed = logits_of(model, tokens)
                for p, v in saved.items():
                    p.copy_(v)
            torch.testing.assert_close(hooked, zeroed, atol=1e-5, rtol=1e-5)
            assert len(layers) == 2


def test_bert_output_projection_is_found_beside_the_self_attention() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        attn_implementation="eager",
    )  # fmt: skip
    model = transformers.BertModel(config).eval()
    layers = attention_layers(model)
    assert [ly.name for ly in layers] == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    assert layers[0].sites["z"].module is model.encoder.layer[0].attention.output.dense
    assert not layers[0].mlp_found  # BERT blocks have intermediate/output, no `mlp`
    with pytest.raises(HookError, match="MLP"), head_hooks(model, {}, mlp_edits={0: lambda x: x}):
        pass


def test_models_without_per_head_sites_raise_naming_what_is_missing() -> None:
    with pytest.raises(HookError, match=r"GatedLinearAttention.*per-head q/k/v/z"):
        attention_layers(CausalLM(20, 16, 2, "gla", max_len=8))
    with pytest.raises(HookError, match="no attention layer"):
        attention_layers(torch.nn.Linear(3, 3))
    mixed = torch.nn.Sequential(attnzoo.create("mhsa", dim=8, num_heads=2), attnzoo.create("gla", dim=8))
    with pytest.raises(HookError, match=r"mixes hookable.*GatedLinearAttention"):
        attention_layers(mixed)
    with pytest.raises(HookError, match="no attention layer"):
        path_patching(torch.nn.Sequential(torch.nn.Embedding(5, 4)), ioi_prompts(2))


def test_bad_edits_are_refused() -> None:
    model = random_lm()
    tokens = torch.randint(0, 10, (1, 4))
    with pytest.raises(ValueError, match="site must be one of"), head_hooks(model, {(0, "o"): lambda x: x}):
        pass
    with pytest.raises(ValueError, match="out of range"), head_hooks(model, {(7, "q"): lambda x: x}):
        pass
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        with head_hooks(model, {(0, "v"): lambda x: x[..., :1]}):
            logits_of(model, tokens)
    with pytest.raises(ValueError, match="GQA"):
        head_parameter_masks(_llama(), [(0, 0)])


def _llama() -> torch.nn.Module:
    from tests import helpers

    pytest.importorskip("transformers")
    return helpers.tiny_llama(num_hidden_layers=1)


def test_transformer_lens_models_are_hooked_through_their_hook_points() -> None:
    pytest.importorskip("transformer_lens")
    from attnzoo.analysis.tl import to_transformer_lens

    model = random_lm()
    bridge = to_transformer_lens(model)
    layers = attention_layers(bridge)
    assert layers[1].sites["z"] == "blocks.1.attn.hook_z" and layers[1].mlp == "blocks.1.hook_mlp_out"
    tokens = torch.randint(0, len(default_vocab()), (2, 6))
    ours, _ = cache_sites(model, tokens, attention_layers(model), ["k"])
    theirs, _ = cache_sites(bridge, tokens, layers, ["k"])
    torch.testing.assert_close(ours[(1, "k")], theirs[(1, "k")], atol=1e-5, rtol=1e-5)
    with pytest.raises(HookError, match="TransformerLens"):
        head_parameter_masks(bridge, [(0, 0)])
    with pytest.raises(ValueError, match="plain mhsa"):
        to_transformer_lens(CausalLM(20, 16, 2, "mhsa", max_len=8))  # no MLP
