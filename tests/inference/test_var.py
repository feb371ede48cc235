from __future__ import annotations

import pytest
import torch

from attnzoo.inference.var import (
    PrefillSinks,
    VisualAttentionRedistribution,
    image_centric_rows,
    redistribute,
    sink_tokens,
    var_model,
)


def _probs(b: int, h: int, n: int, boost: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    for j in boost:
        s[..., j] += 3.0
    return s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf")).softmax(-1)


def _hidden(b: int, t: int, d: int, sinks: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    x[:, list(sinks), 3] = 400.0
    return x


def test_sink_tokens_rms_threshold() -> None:
    x = _hidden(1, 10, 64, (0, 4))
    s = sink_tokens(x, [3, 7], tau=5.0)
    assert s.dtype == torch.bool and s.shape == (1, 10)
    assert s[0].nonzero().flatten().tolist() == [0, 4]
    with pytest.raises(ValueError, match="dim_sink"):
        sink_tokens(x, [64])


def test_redistribution_preserves_rows_and_moves_sink_mass_to_image() -> None:
    n, start, length = 16, 2, 8
    probs = _probs(1, 4, n, (0, 4))
    sinks = torch.zeros(1, n, dtype=torch.bool)
    sinks[0, [0, 4, 12]] = True
    rows = image_centric_rows(probs, sinks, start, length, rho=0.9, summ=0.0)
    out = redistribute(probs, sinks, rows, start, length, p=0.6)
    torch.testing.assert_close(out.sum(-1), probs.sum(-1))
    changed = (out - probs).abs().amax(-1) > 0
    assert changed.any()
    assert not changed[..., : start + length].any()  # queries inside/before the image untouched
    assert torch.equal(changed, changed & rows)
    sel = changed[0, :, :, None].expand(-1, -1, n)
    torch.testing.assert_close(
        out[0][sel].view(-1, n)[:, [0, 4, 12]], 0.6 * probs[0][sel].view(-1, n)[:, [0, 4, 12]]
    )
    outside = [j for j in range(n) if not start <= j < start + length and j not in (0, 4, 12)]
    torch.testing.assert_close(out[..., outside], probs[..., outside])


def test_no_visual_sink_means_no_change() -> None:
    probs = _probs(1, 2, 12, (0,))
    sinks = torch.zeros(1, 12, dtype=torch.bool)
    sinks[0, 0] = True  # a text sink only
    var = VisualAttentionRedistribution(dim_sink=[0], tau=0.0, rho=1.0, summ=0.0)
    rows, out = var.apply(probs, sinks, 3, 5)
    assert not rows.any()
    assert torch.equal(out, probs)


def test_batch_elements_have_their_own_sinks() -> None:
    probs = _probs(2, 2, 12, (0, 5))
    x = torch.cat([_hidden(1, 12, 16, (0, 5)), _hidden(1, 12, 16, (0,), seed=1)])
    var = VisualAttentionRedistribution(dim_sink=[3], tau=3.0, rho=0.95, summ=0.0)
    sinks, rows, out = var(x, probs, 3, 5)
    assert sinks[0].nonzero().flatten().tolist() == [0, 5] and sinks[1].nonzero().flatten().tolist() == [0]
    assert rows[0].any() and not rows[1].any()
    for b in range(2):
        _, _, single = var(x[b : b + 1], probs[b : b + 1], 3, 5)
        torch.testing.assert_close(out[b : b + 1], single)


def test_bad_image_span() -> None:
    probs = _probs(1, 2, 8, ())
    with pytest.raises(ValueError, match="image span"):
        image_centric_rows(probs, torch.zeros(1, 8, dtype=torch.bool), 4, 6)
    with pytest.raises(TypeError, match="sinks"):
        image_centric_rows(probs, torch.zeros(1, 8), 1, 3)


class _Layer(torch.nn.Module):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


def test_prefill_sinks_detects_at_prefill_and_keeps_them_for_decode_steps() -> None:
    seen: list[torch.Tensor] = []
    hook = PrefillSinks(VisualAttentionRedistribution(dim_sink=[3], tau=3.0), on_prefill=seen.append)
    layer = _Layer()
    layer.register_forward_pre_hook(hook, with_kwargs=True)
    assert hook.sinks is None
    layer(_hidden(1, 8, 16, (0, 5)))
    prefill = hook.sinks
    assert prefill is not None and prefill[0].nonzero().flatten().tolist() == [0, 5]
    layer(_hidden(1, 1, 16, (0,), seed=1))  # a decode step (one token, itself a sink) keeps the prefill set
    assert hook.sinks is prefill and len(seen) == 1
    layer(hidden_states=_hidden(1, 6, 16, (2,), seed=2))  # a new prefill, passed by keyword
    assert hook.sinks[0].nonzero().flatten().tolist() == [2] and len(seen) == 2 and seen[-1] is hook.sinks


def test_var_on_tiny_llama(tiny_llama: torch.nn.Module) -> None:
    ids = torch.randint(0, 50, (1, 14), generator=torch.Generator().manual_seed(2))
    kw = {"dim_sink": [0, 1, 2, 3], "tau": 1.0, "rho": 1.0, "summ": 0.0}
    with torch.no_grad():
        plain = tiny_llama(ids).logits
        with var_model(tiny_llama, 2, 6, p=1.0, **kw):
            same = tiny_llama(ids).logits
        with var_model(tiny_llama, 2, 6, p=0.3, layers=[0, 1, 2], **kw) as sinks:
            pre = tiny_llama(ids[:, :-1], use_cache=True)
            prefill_sinks = {k: v.clone() for k, v in sinks.items()}
            tiny_llama(ids[:, -1:], cache=pre.cache, use_cache=True)
            changed = tiny_llama(ids).logits
    torch.testing.assert_close(same, plain, atol=1e-5, rtol=1e-5)
    assert sorted(prefill_sinks) == [0, 1, 2] and all(v.shape == (1, 13) for v in prefill_sinks.values())
    assert any(v[0, 2:8].any() for v in prefill_sinks.values())
    torch.testing.assert_close(changed[:, :8], plain[:, :8], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(changed[:, 8:], plain[:, 8:], atol=1e-4)
    assert tiny_llama.config._attn_implementation == "eager"
