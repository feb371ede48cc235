"""capture() on transformers models (eager attention) and on attnzoo modules: outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import attnzoo
from attnzoo.analysis.metrics import attention_entropy, mean_attention_distance


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    return ids, mask


def test_llama_capture_keeps_outputs_and_records_everything(tiny_llama: torch.nn.Module) -> None:
    ids, am = _ids()
    with torch.no_grad():
        plain = tiny_llama(input_ids=ids, attention_mask=am).logits
        with attnzoo.capture(tiny_llama, scores=True, values=True, hidden=True) as cap:
            captured = tiny_llama(input_ids=ids, attention_mask=am).logits
    assert torch.equal(plain, captured)
    assert cap.names() == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    rec = cap["model.layers.1.self_attn"][0]
    assert rec.probs.shape == (2, 4, 7, 7) and rec.num_heads == 4
    assert rec.values is not None and rec.values.shape == (2, 4, 7, 8)  # 2 kv heads expanded to 4
    assert rec.hidden is not None and rec.hidden.shape == (2, 7, 32)
    assert rec.scores is not None and rec.mask is not None
    real = am.bool()
    # causal + padding: allowed keys are real and not in the future
    assert (
        not rec.mask[1, 0, 3, :2].any() and rec.mask[1, 0, 3, 2:4].all() and not rec.mask[1, 0, 3, 4:].any()
    )
    torch.testing.assert_close(rec.scores[1, :, 2:].softmax(-1), rec.probs[1, :, 2:])
    torch.testing.assert_close(rec.probs[0].sum(-1), torch.ones(4, 7))
    assert torch.isfinite(attention_entropy(rec.probs, real)).all()


def test_vit_and_clip_vision_capture(tiny_vit: torch.nn.Module, tiny_clip_vision: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 16, 16)
    for model in (tiny_vit, tiny_clip_vision):
        with torch.no_grad():
            plain = model(pixel_values=x).last_hidden_state
            with attnzoo.capture(model, values=True) as cap:
                captured = model(pixel_values=x).last_hidden_state
        assert torch.equal(plain, captured)
        assert len(cap.names()) == 2
        rec = cap.records[-1]
        assert rec.probs.shape == (2, 2, 17, 17) and rec.values.shape == (2, 2, 17, 16)
        assert rec.mask is None
        d = mean_attention_distance(rec.probs, (4, 4), num_prefix_tokens=1, patch_size=4)
        assert d.shape == (2, 2) and (d > 0).all()


def test_patch_is_removed_and_nothing_recorded_after_exit(tiny_llama: torch.nn.Module) -> None:
    ids, _ = _ids()
    with attnzoo.capture(tiny_llama) as outer:
        with attnzoo.capture(tiny_llama) as inner:
            tiny_llama(input_ids=ids)
        tiny_llama(input_ids=ids)
    assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS)
    tiny_llama(input_ids=ids)
    assert len(inner.records) == 2 and len(outer.records) == 4


def test_non_eager_model_is_refused() -> None:
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=20,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config)
    with pytest.raises(ValueError, match="eager"):
        with attnzoo.capture(model):
            pass
    assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS)


def test_attnzoo_module_hidden_option() -> None:
    model = torch.nn.Sequential(attnzoo.create("mhsa", dim=8, num_heads=2)).eval()
    x = torch.randn(2, 5, 8)
    plain = model(x)
    with attnzoo.capture(model, hidden=True) as cap:
        out = model(x)
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=1e-5)
    rec = cap["0"][0]
    assert rec.hidden is not None and torch.equal(rec.hidden, x) and rec.probs.shape == (2, 2, 5, 5)
    with pytest.raises(ValueError, match="hidden"):
        attnzoo.capture(hidden=True)


def test_capture_without_model_records_unnamed(tiny_llama: torch.nn.Module) -> None:
    with attnzoo.capture() as cap:
        tiny_llama(input_ids=torch.randint(0, 50, (1, 4)))
    assert cap.names() == ["<unnamed>"] and len(cap.records) == 2


def test_llm_metrics_on_captured_causal_maps(tiny_llama: torch.nn.Module) -> None:
    from attnzoo.analysis.metrics import future_attention_influence, windowed_average_attention_distance

    ids, am = _ids()
    with torch.no_grad(), attnzoo.capture(tiny_llama) as cap:
        tiny_llama(input_ids=ids, attention_mask=am)
    probs = cap.records[0].probs
    real = am.bool()
    waad = windowed_average_attention_distance(probs, window=3, mask=real)
    assert torch.isnan(waad[1, :, :2]).all() and ((waad[0] >= 0) & (waad[0] <= 3)).all()
    fai = future_attention_influence(probs, mask=real)
    assert torch.isfinite(fai[0, :, :-1]).all() and torch.isnan(fai[:, :, -1]).all()
