"""``attnzoo.integrations.hf.configure``: the inference-method implementations (ACT, VAR, PINE,
Recycled attention) against their context managers in attnzoo.inference, settings that survive
implementation switches, and every misuse refused with a message naming the culprit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from tests import helpers
from torch import nn

from attnzoo.analysis import edit_heads
from attnzoo.integrations import IntegrationError, hf
from attnzoo.integrations._hf_core import bindings

pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("hf_registered")

Ids = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _decode(model: nn.Module, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """Logits of a prefill of ``prompt`` tokens followed by cached one-token steps to the end of ``ids``."""
    out = model(input_ids=ids[:, :prompt], use_cache=True)
    logits, cache = [out.logits], out.cache
    for t in range(prompt, ids.shape[1]):
        out = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
        logits.append(out.logits)
        cache = out.cache
    return torch.cat(logits, dim=1)


def test_inference_methods_equal_their_context_managers(llama: nn.Module) -> None:
    from attnzoo.inference.act import act_calibrate_model
    from attnzoo.inference.recycled import recycled_attention_model
    from attnzoo.inference.var import var_model

    ids = torch.randint(0, 50, (1, 14), generator=torch.Generator().manual_seed(2))
    act = {"heads": {1: [0, 3], 2: [1]}, "threshold": 0.05}
    var = {"dim_sink": [0, 1, 2, 3], "tau": 1.0, "rho": 1.0, "summ": 0.0, "p": 0.3, "layers": [0, 1, 2]}
    with torch.no_grad():
        with act_calibrate_model(llama, act["heads"], threshold=0.05):
            ref_act = _decode(llama, ids, 10)
        with var_model(llama, 2, 6, **var) as ref_sinks:
            ref_var = _decode(llama, ids, 10)
        with recycled_attention_model(llama, stride=3, top_k=2):
            ref_recycled = _decode(llama, ids, 6)
        plain = llama(input_ids=ids).logits
        hf.configure(llama, "act", **act)
        out_act = _decode(llama, ids, 10)
        config = hf.configure(llama, "var", image_start=2, image_len=6, **var)
        out_var = _decode(llama, ids, 10)
        recycled = hf.configure(llama, "recycled", stride=3, top_k=2)
        out_recycled = _decode(llama, ids, 6)
    torch.testing.assert_close(out_act, ref_act, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_var, ref_var, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_recycled, ref_recycled, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out_act[:, :10], plain[:, :10], atol=1e-4)
    assert not torch.allclose(out_recycled[:, 8:], plain[:, 8:], atol=1e-4)
    assert sorted(config.states) == [f"model.layers.{i}.self_attn" for i in range(3)]
    for i in range(3):
        assert torch.equal(config.states[f"model.layers.{i}.self_attn"].sinks, ref_sinks[i])
    assert all(s.step == 8 for s in recycled.states.values()) and len(recycled.states) == 3


def test_pine_equals_its_context_manager(llama: nn.Module, make_ids: Ids) -> None:
    from attnzoo.inference.pine import pine_model

    llama.double()
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with pine_model(llama, 2, (3, 2, 4)):
            ref = llama(input_ids=ids).logits
        hf.configure(llama, "pine", prefix=2, documents=[3, 2, 4])
        out = llama(input_ids=ids).logits
        with pytest.raises(IntegrationError, match="unpadded"):
            llama(input_ids=ids.expand(2, -1), attention_mask=make_ids(n=12)[1])
        with pytest.raises(IntegrationError, match="output_attentions"):
            llama(input_ids=ids, output_attentions=True)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    scaled = helpers.tiny_llama(num_hidden_layers=1, rope_parameters={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(IntegrationError, match=r"model: PINE needs default .*'linear' RoPE"):
        hf.configure(scaled, "pine", prefix=2, documents=[3])
    assert scaled.config._attn_implementation == "eager"


def test_settings_survive_set_attn_implementation_and_unconfigure_removes_them(
    llama: nn.Module, make_ids: Ids
) -> None:
    ids, am = make_ids()
    with torch.no_grad():
        eager = llama(input_ids=ids, attention_mask=am).logits
        layer = llama.model.layers[2]
        hooks = len(layer._forward_pre_hooks)
        hf.configure(llama, "sliding_window", window=2)
        hf.configure(llama, "var", image_start=1, image_len=3, dim_sink=[0], tau=1.0)
        llama(input_ids=ids, attention_mask=am)
        assert len(layer._forward_pre_hooks) == hooks + 1
        llama.set_attn_implementation("attnzoo_sliding_window")
        windowed = llama(input_ids=ids, attention_mask=am).logits
        llama.set_attn_implementation("eager")
        torch.testing.assert_close(llama(input_ids=ids, attention_mask=am).logits, eager)
        llama.set_attn_implementation("attnzoo_sliding_window")
        torch.testing.assert_close(llama(input_ids=ids, attention_mask=am).logits, windowed)
        assert not torch.allclose(windowed, eager, atol=1e-4)
        hf.unconfigure(llama)
        assert len(layer._forward_pre_hooks) == hooks
        with pytest.raises(IntegrationError, match="configure"):
            llama(input_ids=ids)


def test_unknown_and_unfitting_mechanisms_say_why(llama: nn.Module) -> None:
    with pytest.raises(IntegrationError, match="closest: sliding_window"):
        hf.configure(llama, "slidng_window", window=2)
    with pytest.raises(IntegrationError, match="closest: neighborhood_attention_1d"):
        hf.implementation_name("attnzoo_neighbourhood_attention_1d")
    assert (
        hf.implementation_name("swa")
        == "attnzoo_sliding_window"
        == hf.implementation_name("attnzoo_sliding_window")
    )
    for name, why in [
        ("linear_attention", "feature map"),
        ("attnzoo_neighborhood_attention_2d", "2-D mixer"),
        ("eca", "feature_map mechanism"),
    ]:
        with pytest.raises(IntegrationError, match=why):
            hf.configure(llama, name)
    with pytest.raises(TypeError, match="mechanism"):
        hf.implementation_name(3)  # type: ignore[arg-type]
    assert llama.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    ("mechanism", "settings", "error", "match"),
    [
        ("sliding_window", {"window": -1}, IntegrationError, "window must be >= 0"),
        ("sliding_window", {"window": "3"}, TypeError, "window must be an int"),
        ("sliding_window", {}, IntegrationError, "window: LlamaForCausalLM has no sliding_window"),
        ("sliding_window", {"windw": 2}, IntegrationError, "unknown setting.*windw; accepted: window"),
        ("neighborhood_attention_1d", {"dilation": 2}, IntegrationError, "missing setting.*kernel_size"),
        ("s2_attention", {"group_size": 1}, IntegrationError, "group_size must be >= 2"),
        ("act", {"heads": {7: [0]}}, IntegrationError, r"heads: layers \[7\]"),
        ("act", {"heads": {0: [4]}}, IntegrationError, r"heads\[0\]: heads \[4\] out of range"),
        ("act", {"heads": {0: [1]}, "beta": 1.5}, IntegrationError, "beta must be in"),
        ("var", {"image_start": 0, "image_len": 2, "dim_sink": [99]}, IntegrationError, "dim_sink"),
        ("var", {"image_start": 0, "image_len": 2, "layers": [5]}, IntegrationError, "layers"),
        ("pine", {"prefix": 1, "documents": [0]}, IntegrationError, r"documents\[0\] must be >= 1"),
        ("recycled", {"stride": 0, "top_k": 2}, IntegrationError, "stride must be >= 1"),
    ],
)
def test_invalid_settings_name_the_argument_and_change_nothing(
    llama: nn.Module, mechanism: str, settings: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        hf.configure(llama, mechanism, **settings)
    assert llama.config._attn_implementation == "eager"
    assert not any(bindings(m) for m in llama.modules() if "_attnzoo_hf" in vars(m))


def test_models_and_calls_the_functions_cannot_serve(
    llama: nn.Module, make_ids: Ids, attend: Callable[..., Any], stand_in: Callable[..., nn.Module]
) -> None:
    with pytest.raises(IntegrationError, match="not a transformers model"):
        hf.configure(nn.Linear(2, 2), "mhsa")
    llama.set_attn_implementation("attnzoo_neighborhood_attention_1d")
    with pytest.raises(IntegrationError, match="configure"):
        llama(input_ids=make_ids()[0])
    llama.set_attn_implementation("attnzoo_sliding_window")
    with pytest.raises(IntegrationError, match="no window"):
        llama(input_ids=make_ids()[0])
    with pytest.raises(ValueError, match="eager"):
        with edit_heads(llama, zero={"model.layers.0.self_attn": [0]}):
            pass
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)
    module = stand_in(True)
    with pytest.raises(IntegrationError, match="key"):
        attend("attnzoo_mhsa", module, q, k, v)
    with pytest.raises(IntegrationError, match="softcap"):
        attend("attnzoo_mhsa", module, q, q, q, softcap=30.0)
    with pytest.raises(IntegrationError, match="attention_mask"):
        attend("attnzoo_mhsa", module, q, q, q, torch.zeros(1, 1, 4, 5))
    with pytest.raises(TypeError, match="attention_mask"):
        attend("attnzoo_mhsa", module, q, q, q, [[0.0]])
    encoder = stand_in(False, "sliding_window", hf.SlidingWindowSettings(1))
    with pytest.raises(IntegrationError, match="cross-attention"):
        attend("attnzoo_sliding_window", encoder, q, q[:, :, :3], q[:, :, :3])
