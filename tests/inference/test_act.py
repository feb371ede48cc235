from __future__ import annotations

import pytest
import torch

from attnzoo.inference.act import ACTCalibration, act_calibrate_model, calibrate, sink_mask
from attnzoo.inference.hf_edit import edit_attention, hf_attention_layers
from attnzoo.parity import fixture_cases, parity_root


def _causal_probs(b: int, h: int, n: int, sinks: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    for s in sinks:
        scores[..., s] += 4.0
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def _decode_row(h: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(1, h, 1, n, generator=g, dtype=torch.float64)
    scores[..., 0] += 5.0
    scores[..., 7] += 5.0
    scores[..., 11] += 5.0
    return scores.softmax(-1)


def test_prefill_rows_sum_to_one_and_sinks_scaled() -> None:
    p = _causal_probs(2, 3, 12, (0, 4))
    out = calibrate(p, [0, 2], beta=0.4, threshold=0.1)
    torch.testing.assert_close(out.sum(-1), torch.ones_like(out.sum(-1)))
    _, calib = sink_mask(p, 0.1)
    assert calib[:, 0, 4].all() and not calib[:, 0, 0].any()
    torch.testing.assert_close(out[:, 0, :, 4], 0.4 * p[:, 0, :, 4])
    torch.testing.assert_close(out[:, 1], p[:, 1])
    assert torch.equal(out[:, 0].triu(1), torch.zeros_like(out[:, 0]).triu(1))


def test_decode_default_fixes_quirk_and_matches_prefill_row() -> None:
    """At decode the default renormalises like any prefill row; the official quirk does not."""
    row = _decode_row(4, 20)
    fixed = calibrate(row, [0, 1, 2, 3], beta=0.4, threshold=0.1)
    torch.testing.assert_close(fixed.sum(-1), torch.ones(1, 4, 1, dtype=torch.float64))
    quirk = calibrate(row, [0, 1, 2, 3], beta=0.4, threshold=0.1, official_quirks=True)
    assert torch.all(quirk[..., 0] == 1.0)
    assert (quirk.sum(-1) - 1).abs().min() > 1e-3
    _, calib = sink_mask(row, 0.1)
    sink = calib.unsqueeze(-2)
    freed = 0.6 * (row * sink).sum(-1, keepdim=True)
    expected = torch.where(sink, 0.4 * row, row) + freed * row
    expected[..., 0] = 1.0
    torch.testing.assert_close(quirk, expected)


def test_chunked_prefill_supported_by_default_and_rejected_by_quirks() -> None:
    p = _causal_probs(1, 2, 12, (0, 4))[..., 8:, :]
    out = calibrate(p, [1])
    torch.testing.assert_close(out.sum(-1), torch.ones_like(out.sum(-1)))
    with pytest.raises(ValueError, match="official_quirks"):
        calibrate(p, [1], official_quirks=True)


def test_bad_arguments() -> None:
    p = _causal_probs(1, 2, 6, (0,))
    with pytest.raises(ValueError, match="heads"):
        calibrate(p, [2])
    with pytest.raises(ValueError, match="beta"):
        ACTCalibration(beta=1.5)
    with pytest.raises(ValueError, match="probs"):
        calibrate(p[0], [0])


@pytest.mark.skipif(not (parity_root() / "act_calibration").is_dir(), reason="no parity fixtures")
def test_quirk_option_reproduces_official_decode_and_default_fixes_it() -> None:
    case = next(c for c in fixture_cases("act_calibration") if c.inputs["attn_weights"].shape[-2] == 1)
    probs, expected = case.inputs["attn_weights"], case.outputs[0]
    heads = case.forward["heads"]
    quirk = ACTCalibration(**case.constructor, official_quirks=True)(probs, heads)
    torch.testing.assert_close(quirk, expected, atol=case.atol, rtol=case.rtol)
    fixed = ACTCalibration(**case.constructor)(probs, heads)
    torch.testing.assert_close(fixed.sum(-1), torch.ones_like(fixed.sum(-1)))
    assert not torch.allclose(fixed, expected)


@pytest.mark.skipif(not (parity_root() / "act_calibration").is_dir(), reason="no parity fixtures")
def test_prefill_default_equals_official() -> None:
    for case in fixture_cases("act_calibration"):
        probs = case.inputs["attn_weights"]
        if probs.shape[-2] == 1:
            continue
        out = ACTCalibration(**case.constructor)(probs, case.forward["heads"])
        torch.testing.assert_close(out, case.outputs[0], atol=case.atol, rtol=case.rtol)


def test_hf_edit_without_edits_matches_eager(tiny_llama: torch.nn.Module) -> None:
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_llama(ids).logits
        with edit_attention(tiny_llama, {}):
            out = tiny_llama(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert tiny_llama.config._attn_implementation == "eager"


def test_act_on_tiny_llama_prefill_and_cached_decode(tiny_llama: torch.nn.Module) -> None:
    """The calibrated model sees calibrated maps at prefill and at each cached decode step; an
    uncached full pass gives the same last-token logits as prefill + one decode step."""
    ids = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(1))
    heads = {1: [0, 3], 2: [1]}
    seen: list[tuple[int, ...]] = []
    layers = hf_attention_layers(tiny_llama)
    hook = layers[1].register_forward_hook(lambda m, a, out: seen.append(tuple(out[1].shape)))
    with torch.no_grad():
        plain = tiny_llama(ids).logits
        with act_calibrate_model(tiny_llama, heads, beta=0.4, threshold=0.05):
            full = tiny_llama(ids).logits
            pre = tiny_llama(ids[:, :-1], use_cache=True)
            step = tiny_llama(ids[:, -1:], past_key_values=pre.past_key_values, use_cache=True).logits
    hook.remove()
    assert (4, 10, 10) in [s[1:] for s in seen] and (4, 1, 10) in [s[1:] for s in seen]
    assert not torch.allclose(full, plain)
    torch.testing.assert_close(full[:, :-1], pre.logits, atol=1e-5, rtol=1e-5)
    assert step.shape == (1, 1, 50)
    with pytest.raises(ValueError, match="layers"):
        with act_calibrate_model(tiny_llama, {7: [0]}):
            pass


def test_capture_sees_softmax_and_calibrated_maps(tiny_llama: torch.nn.Module) -> None:
    from attnzoo.capture import capture

    ids = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), capture(tiny_llama) as cap:
        with act_calibrate_model(tiny_llama, {1: [0, 1, 2, 3]}, threshold=0.05):
            tiny_llama(ids)
    records = cap["model.layers.1.self_attn"]
    kinds = [r.kind for r in records]
    assert kinds == ["softmax", "edited"]
    expected = calibrate(records[0].probs, [0, 1, 2, 3], threshold=0.05)
    torch.testing.assert_close(records[1].probs, expected)
    assert [r.kind for r in cap["model.layers.0.self_attn"]] == ["softmax"]
