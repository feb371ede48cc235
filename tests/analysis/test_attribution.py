"""Head ablation, head importance and Ships: interventions equal their weight-space definitions."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.analysis.attribution import ablate_heads, attention_heads, head_importance, ships
from attnzoo.analysis.hf import edit_heads


def test_hf_head_ablation_equals_zeroing_that_heads_output(tiny_llama: torch.nn.Module) -> None:
    ids = torch.randint(0, 50, (2, 6))
    name = "model.layers.1.self_attn"
    with torch.no_grad():
        with ablate_heads(tiny_llama, {name: [1, 3]}):
            ablated = tiny_llama(input_ids=ids).logits
        attn = tiny_llama.model.layers[1].self_attn
        d = attn.head_dim
        saved = attn.o_proj.weight.detach().clone()
        attn.o_proj.weight[:, d : 2 * d] = 0
        attn.o_proj.weight[:, 3 * d : 4 * d] = 0
        reference = tiny_llama(input_ids=ids).logits
        attn.o_proj.weight.copy_(saved)
        restored = tiny_llama(input_ids=ids).logits
    torch.testing.assert_close(ablated, reference)
    assert not torch.allclose(ablated, restored)


def test_vit_head_ablation_equals_zeroing_that_heads_output(tiny_vit: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 16, 16)
    name = "layers.0.attention"
    assert attention_heads(tiny_vit) == {"layers.0.attention": 2, "layers.1.attention": 2}
    with torch.no_grad():
        with ablate_heads(tiny_vit, {name: [0]}):
            ablated = tiny_vit(pixel_values=x).last_hidden_state
        o_proj = tiny_vit.get_submodule(name).o_proj
        o_proj.weight[:, :16] = 0
        reference = tiny_vit(pixel_values=x).last_hidden_state
    torch.testing.assert_close(ablated, reference)


def test_attnzoo_head_ablation_equals_zeroing_proj_columns() -> None:
    model = torch.nn.Sequential(attnzoo.create("mhsa", dim=8, num_heads=2)).eval()
    x = torch.randn(2, 5, 8)
    assert attention_heads(model) == {"0": 2}
    with torch.no_grad():
        with ablate_heads(model, {"0": [1]}):
            ablated = model(x)
        model[0].proj.weight[:, 4:] = 0
        reference = model(x)
    torch.testing.assert_close(ablated, reference)


def test_head_importance_is_score_drop(tiny_llama: torch.nn.Module) -> None:
    ids = torch.randint(0, 50, (2, 6))
    target = torch.randint(0, 50, (2,))

    def score() -> torch.Tensor:
        logp = tiny_llama(input_ids=ids).logits[:, -1].log_softmax(-1)
        return logp.gather(1, target[:, None]).mean()

    imp = head_importance(tiny_llama, score)
    assert len(imp) == 2 * 4
    with torch.no_grad():
        base = float(score())
        with ablate_heads(tiny_llama, {"model.layers.0.self_attn": [2]}):
            dropped = float(score())
    assert imp[("model.layers.0.self_attn", 2)] == pytest.approx(base - dropped)


def test_ships_equals_kl_with_scaled_query_weights(tiny_llama: torch.nn.Module) -> None:
    ids = torch.randint(0, 50, (2, 6))
    am = torch.ones(2, 6, dtype=torch.long)
    am[1, 4:] = 0  # right padding: read the distribution at position 3
    inputs = {"input_ids": ids, "attention_mask": am}
    name = "model.layers.0.self_attn"
    scores = ships(tiny_llama, inputs, {name: 4}, epsilon=1e-4)
    assert set(scores) == {(name, h) for h in range(4)}
    with torch.no_grad():
        logits = tiny_llama(**inputs).logits
        p = logits[[0, 1], [5, 3]].log_softmax(-1)
        q_proj = tiny_llama.model.layers[0].self_attn.q_proj
        d = 8
        q_proj.weight[2 * d : 3 * d] *= 1e-4
        q = tiny_llama(**inputs).logits[[0, 1], [5, 3]].log_softmax(-1)
    expected = (p.exp() * (p - q)).sum(-1).double()
    torch.testing.assert_close(scores[(name, 2)], expected, atol=1e-6, rtol=1e-4)
    assert all((v > 1e-3).all() for v in scores.values())
    unchanged = ships(tiny_llama, inputs, {name: 1}, epsilon=1.0)
    torch.testing.assert_close(unchanged[(name, 0)], torch.zeros(2, dtype=torch.float64), atol=1e-7, rtol=0)


def test_bad_edits_raise(tiny_llama: torch.nn.Module) -> None:
    with pytest.raises(KeyError, match="known"):
        with ablate_heads(tiny_llama, {"model.nope": [0]}):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with edit_heads(tiny_llama, zero={"model.layers.0.self_attn": [4]}):
            pass
    with pytest.raises(KeyError, match="known"):
        ships(tiny_llama, {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, {"x": 1})
