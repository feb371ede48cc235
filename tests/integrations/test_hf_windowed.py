"""Windowed attnzoo implementations in Hugging Face transformers models: ``attnzoo_sliding_window``,
``attnzoo_neighborhood_attention_1d`` and ``attnzoo_s2_attention`` against Mistral's eager attention,
attnzoo's own mixers and kernels, with caches and padding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from tests import helpers
from torch import nn

import attnzoo
from attnzoo.integrations import IntegrationError, hf
from attnzoo.kernels import split_heads
from attnzoo.kernels.neighborhood import neighborhood_attention_reference, neighborhood_mask

pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("hf_registered")

Ids = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _through(
    attend: Callable[..., Any], mixer: nn.Module, name: str, module: nn.Module, x: torch.Tensor, **kw: Any
) -> torch.Tensor:
    """``mixer``'s projections around the attention function ``name`` instead of its own attention."""
    q, k, v = split_heads(mixer.qkv(x), 3 * mixer.num_heads).chunk(3, dim=1)
    out, _ = attend(name, module, q, k, v, **kw)
    return mixer.proj(out.reshape(x.shape))


def test_sliding_window_equals_mistral_eager_and_llama_window(llama: nn.Module, make_ids: Ids) -> None:
    torch.manual_seed(1)
    mistral = helpers.tiny_mistral(num_hidden_layers=3, sliding_window=3)
    mistral.load_state_dict(llama.state_dict())
    ids, am = make_ids(n=10)
    with torch.no_grad():
        ref = mistral(input_ids=ids, attention_mask=am, output_attentions=True)
        pre = mistral(input_ids=ids[:, :7], attention_mask=am[:, :7], use_cache=True)
        ref_step = mistral(input_ids=ids[:, 7:8], attention_mask=am[:, :8], cache=pre.cache)
        hf.configure(mistral, "sliding_window")  # the model's own window: W - 1 = 2 keys back
        out = mistral(input_ids=ids, attention_mask=am, output_attentions=True)
        unpadded = mistral(input_ids=ids[:1]).logits
        pre = mistral(input_ids=ids[:, :7], attention_mask=am[:, :7], use_cache=True)
        step = mistral(input_ids=ids[:, 7:8], attention_mask=am[:, :8], cache=pre.cache)
        hf.configure(llama, "sliding_window", window=2)
        windowed_llama = llama(input_ids=ids, attention_mask=am).logits
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unpadded, ref.logits[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step.logits, ref_step.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(windowed_llama, ref.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(ref.attentions, out.attentions, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    with pytest.raises(IntegrationError, match="window=3 exceeds the model's own sliding_window=3"):
        hf.configure(mistral, "sliding_window", window=3)


@pytest.mark.parametrize("causal", [True, False])
def test_windowed_functions_equal_attnzoo_mixers(
    causal: bool, attend: Callable[..., Any], stand_in: Callable[..., nn.Module]
) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 11, 16)
    cases = [
        ("sliding_window", hf.SlidingWindowSettings(2), dict(window=2)),
        ("s2_attention", hf.S2Settings(4, num_sink=1), dict(group_size=4, num_sink=1)),
        ("neighborhood_attention_1d", hf.NeighborhoodSettings(3, 2), dict(kernel_size=3, dilation=2)),
    ]
    for name, settings, kw in cases:
        extra = {"rel_pos_bias": False} if name.startswith("neighborhood") else {}
        mixer = attnzoo.create(name, dim=16, num_heads=2, causal=causal, **kw, **extra).eval()
        module = stand_in(causal, name, settings)
        with torch.no_grad():
            ref = mixer(x)
            fast = _through(attend, mixer, f"attnzoo_{name}", module, x)
            dense = _through(attend, mixer, f"attnzoo_{name}", module, x, output_attentions=True)
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dense, ref, atol=1e-5, rtol=1e-5)


def test_neighborhood_equals_kernel_reference_with_grouped_heads_and_padding(
    attend: Callable[..., Any], stand_in: Callable[..., nn.Module]
) -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, h, 12, 8, generator=g) for h in (4, 2, 2))
    expanded = [t.repeat_interleave(2, dim=1) for t in (k, v)]
    name = "attnzoo_neighborhood_attention_1d"
    for causal in (True, False):
        module = stand_in(causal, "neighborhood_attention_1d", hf.NeighborhoodSettings(5))
        out, _ = attend(name, module, q, k, v)
        ref = neighborhood_attention_reference(q, *expanded, 5, is_causal=causal)
        torch.testing.assert_close(out.transpose(1, 2), ref, atol=1e-6, rtol=1e-5)
        _, probs = attend(name, module, q, k, v, output_attentions=True)
        assert probs[..., ~neighborhood_mask((12,), 5, is_causal=causal)].abs().max() == 0
    pad = torch.zeros(2, 1, 12, 12)
    pad[1, ..., :3] = torch.finfo(torch.float32).min
    with pytest.raises(IntegrationError, match="padding"):
        attend(name, module, q, k, v, pad)
    causal_module = stand_in(True, "neighborhood_attention_1d", hf.NeighborhoodSettings(5))
    cm = torch.ones(12, 12, dtype=torch.bool).tril()
    out, _ = attend(name, causal_module, q, k, v, cm & (pad == 0))
    ref = neighborhood_attention_reference(q[1:, :, 3:], *(t[1:, :, 3:] for t in expanded), 5, is_causal=True)
    torch.testing.assert_close(out.transpose(1, 2)[1:, :, 3:], ref, atol=1e-6, rtol=1e-5)


def test_s2_cached_decode_and_padding(llama: nn.Module, make_ids: Ids) -> None:
    ids, _ = make_ids(b=1, n=10)
    hf.configure(llama, "s2_attention", group_size=4, num_sink=1)
    with torch.no_grad():
        full = llama(input_ids=ids).logits
        pre = llama(input_ids=ids[:, :6], use_cache=True)
        step = llama(input_ids=ids[:, 6:7], cache=pre.cache).logits
        right = torch.ones(2, 10, dtype=torch.long)
        right[1, 7:] = 0
        padded = llama(input_ids=ids.expand(2, -1), attention_mask=right).logits
    torch.testing.assert_close(step[:, -1], full[:, 6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1, :7], full[0, :7], atol=1e-5, rtol=1e-5)
    with pytest.raises(IntegrationError, match="left padding"):
        llama(input_ids=ids.expand(2, -1), attention_mask=make_ids(n=10)[1])
