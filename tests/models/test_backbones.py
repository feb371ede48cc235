"""Backbones with a pluggable mechanism: building from cards, fitting the card's configuration,
shapes, causality, masking; and every registered mechanism of a backbone's family either runs
forward and backward in it or is refused by :func:`attnzoo.models.build.refusal` for a card fact."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo.models import CausalLM, MILClassifier, SmallCNN, ViTTiny, build_mechanism, mechanism_kwargs
from attnzoo.models.blocks import BaseConv
from attnzoo.models.build import refusal
from attnzoo.registry import Card


def _registered(name: str) -> None:
    if name not in attnzoo.list_mechanisms():
        pytest.skip(f"{name} is not registered yet")


def test_mechanism_kwargs_replaces_width_and_keeps_the_rest() -> None:
    kw = mechanism_kwargs("mhsa", 48, family="token_mixer", causal=True)
    assert kw == {**attnzoo.card("mhsa").bench, "dim": 48, "causal": True}
    assert mechanism_kwargs("se", 24, family="feature_map")["channels"] == 24
    assert mechanism_kwargs("mhsa", 48, overrides={"num_heads": 3})["num_heads"] == 3


def test_build_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="is a feature_map; this backbone takes token_mixer"):
        build_mechanism("se", 32, family="token_mixer")
    with pytest.raises(ValueError, match="cannot build mechanism 'mhsa' at width 10"):
        build_mechanism("mhsa", 10, family="token_mixer", overrides={"num_heads": 4})
    with pytest.raises(ValueError, match="width must be a positive int"):
        build_mechanism("mhsa", 0)
    non_causal = [n for n in attnzoo.list_mechanisms("token_mixer") if not attnzoo.card(n).causal]
    if non_causal:
        with pytest.raises(ValueError, match="no causal variant"):
            build_mechanism(non_causal[0], 32, family="token_mixer", causal=True)
    with pytest.raises(ValueError, match="feeds 1-D inputs"):
        build_mechanism("se", 32, family="feature_map", spatial_dims=1)


@pytest.mark.parametrize("short_conv", [0, 3])
def test_causal_lm_shapes_and_causality(short_conv: int) -> None:
    lm = CausalLM(20, 16, 2, "mhsa", max_len=12, mlp_ratio=2.0, short_conv=short_conv).eval()
    tok = torch.randint(0, 20, (2, 12))
    out = lm(tok)
    assert out.shape == (2, 12, 20)
    tok2 = tok.clone()
    tok2[:, 7:] = (tok2[:, 7:] + 1) % 20
    torch.testing.assert_close(lm(tok2)[:, :7], out[:, :7])
    assert lm.blocks[0].mixer.causal and (lm.blocks[0].conv is None) == (short_conv == 0)
    with pytest.raises(ValueError, match="max_len"):
        lm(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        lm(torch.zeros(1, 4, dtype=torch.int32))


def test_base_conv_blocks_alternate_with_the_mechanism() -> None:
    lm = CausalLM(20, 16, 4, "mhsa", max_len=12, base_conv=3, positional=False).eval()
    kinds = [type(b.mixer).__name__ for b in lm.blocks]
    assert kinds[0] == kinds[2] == "BaseConv" and kinds[1] == kinds[3] != "BaseConv"
    assert lm.pos is None
    tok = torch.randint(0, 20, (2, 12))
    out = lm(tok)
    tok2 = tok.clone()
    tok2[:, 5:] = (tok2[:, 5:] + 1) % 20
    torch.testing.assert_close(lm(tok2)[:, :5], out[:, :5])
    assert not torch.allclose(lm(tok2)[:, 5:], out[:, 5:])
    with pytest.raises(ValueError, match="depth >= 2"):
        CausalLM(20, 16, 1, "mhsa", max_len=12, base_conv=3)
    with pytest.raises(ValueError, match="base_conv"):
        CausalLM(20, 16, 2, "mhsa", max_len=12, base_conv=-1)


def test_tied_embeddings_share_one_small_table() -> None:
    lm = CausalLM(50, 16, 2, "mhsa", max_len=8, tie_embeddings=True)
    assert lm.head.weight is lm.embed.weight and lm.head.bias is None
    assert float(lm.embed.weight.detach().std()) < 0.05
    n_untied = sum(p.numel() for p in CausalLM(50, 16, 2, "mhsa", max_len=8).parameters())
    assert sum(p.numel() for p in lm.parameters()) == n_untied - 50 * 16 - 50
    lm(torch.randint(0, 50, (2, 8))).sum().backward()
    assert lm.embed.weight.grad is not None
    with pytest.raises(TypeError, match="tie_embeddings"):
        CausalLM(50, 16, 2, "mhsa", max_len=8, tie_embeddings="yes")  # type: ignore[arg-type]


def test_base_conv_is_a_gated_causal_convolution_with_a_residual() -> None:
    conv = BaseConv(4, 2).double()
    u = torch.randn(1, 5, 4, dtype=torch.float64)
    w = conv.conv.conv.weight[:, 0]  # (C, k): y_t = w[:, 1] * u_t + w[:, 0] * u_{t-1} + bias
    shifted = torch.cat([torch.zeros_like(u[:, :1]), u[:, :-1]], dim=1)
    c = u * w[:, 1] + shifted * w[:, 0] + conv.conv.conv.bias
    torch.testing.assert_close(conv(u), c * conv.proj(u) + u)


def test_vit_cnn_mil_shapes() -> None:
    vit = ViTTiny((8, 8), 2, 1, 10, 16, 1, "mhsa")
    assert vit(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert not vit.blocks[0].mixer.causal
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ViTTiny((8, 8), 3, 1, 10, 16, 1, "mhsa")
    cnn = SmallCNN(1, 10, (8, 16), "se")
    assert cnn(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert SmallCNN(1, 10, (8,), None)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_mil_padding_is_ignored() -> None:
    _registered("attention_mil")
    model = MILClassifier(1, 16, "attention_mil").eval()
    bag = torch.randn(1, 5, 1, 8, 8)
    logit, _ = model(bag, torch.ones(1, 5, dtype=torch.bool))
    padded = torch.cat([bag, torch.randn(1, 3, 1, 8, 8)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    logit2, attn2 = model(padded, mask)
    torch.testing.assert_close(logit2, logit)
    assert attn2.shape[-1] == 8 and float(attn2[..., 5:].detach().abs().sum()) == 0.0


def test_fitting_keeps_a_config_that_fits_and_fixes_one_that_does_not() -> None:
    bench = attnzoo.card("reversed_attention").bench
    assert bench["num_heads"] == 6
    assert mechanism_kwargs("reversed_attention", 36)["num_heads"] == 6
    assert mechanism_kwargs("reversed_attention", 32)["num_heads"] == 4
    assert mechanism_kwargs("reversed_attention", 7)["num_heads"] == 1
    assert mechanism_kwargs("reversed_attention", 32, overrides={"num_heads": 8})["num_heads"] == 8
    assert "variants" in attnzoo.card("ela").bench and "variants" not in mechanism_kwargs("ela", 16)
    na = attnzoo.card("neighborhood_attention_2d").bench["kernel_size"]
    assert na == 7 and mechanism_kwargs("neighborhood_attention_2d", 32, size=(9, 8))["kernel_size"] == na
    assert mechanism_kwargs("neighborhood_attention_2d", 32, size=(4, 6))["kernel_size"] == 3
    assert mechanism_kwargs("neighborhood_attention_2d", 32, size=(6, 5))["kernel_size"] == 5
    dil = mechanism_kwargs("neighborhood_attention_1d", 32, size=(16,), overrides={"dilation": 2})
    assert dil["kernel_size"] == 15 and dil["dilation"] == 2  # overrides apply after fitting
    assert mechanism_kwargs("neighborhood_attention_1d", 32, size=(16,))["kernel_size"] == 15
    ws = attnzoo.card("dffreq_window_attention").bench["window_size"]
    assert ws == 8 and mechanism_kwargs("dffreq_window_attention", 32, size=(4, 5))["window_size"] == 4
    with pytest.raises(ValueError, match="size must be a tuple of positive ints"):
        mechanism_kwargs("mhsa", 32, size=(0,))


def test_fitted_extents_run_at_the_size_they_were_fitted_to() -> None:
    for name, size in (("neighborhood_attention_2d", (4, 6)), ("dffreq_window_attention", (3, 5))):
        mixer = build_mechanism(name, 16, family="token_mixer", size=size)
        x = torch.randn(1, size[0] * size[1], 16)
        assert mixer(x, size=size).shape == x.shape
    lm = build_mechanism("neighborhood_attention_1d", 16, size=(9,), causal=True)
    assert lm(torch.randn(1, 9, 16)).shape == (1, 9, 16)


_IMAGES = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
_BACKBONES = {
    "CausalLM": (CausalLM, lambda name: CausalLM(16, 32, 1, name, max_len=16)),
    "ViTTiny": (ViTTiny, lambda name: ViTTiny((8, 8), 2, 1, 10, 32, 1, name)),
    "SmallCNN": (SmallCNN, lambda name: SmallCNN(1, 10, (16, 32), name)),
    "MILClassifier": (MILClassifier, lambda name: MILClassifier(1, 32, name)),
}
_CASES = [
    (backbone, name)
    for backbone, (cls, _) in _BACKBONES.items()
    for name in attnzoo.list_mechanisms(cls.HOSTS["family"])
]


def _expected_refusal(card: Card, hosts: dict[str, Any]) -> str | None:
    """The phrase of the first card fact that rules the mechanism out of the backbone (the test's
    own reading of the rule)."""
    dims = hosts.get("spatial_dims")
    dims = (dims,) if isinstance(dims, int) else dims
    facts = (
        (card.family != hosts["family"], f"is a {card.family}"),
        (dims is not None and card.spatial_dims not in dims, f"works on {card.spatial_dims}-D inputs"),
        (hosts.get("causal") is True and not card.causal, "has no causal variant (card causal=False)"),
        (hosts.get("causal") is False and card.causal_only, "is causal only (card causal_only=True)"),
        (bool(card.extra_inputs), f"needs the forward input(s) {', '.join(card.extra_inputs)}"),
    )
    return next((phrase for fact, phrase in facts if fact), None)


def _run(backbone: str, model: nn.Module) -> torch.Tensor:
    """One forward; returns the float output the loss is taken from."""
    if backbone == "CausalLM":
        out = model(torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(4)))
        assert out.shape == (2, 16, 16)
    elif backbone == "MILClassifier":
        bags = torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
        out, attention = model(bags, torch.tensor([[True] * 4, [True, True, False, False]]))
        assert out.shape == (2,) and attention.shape[0] == 2 and attention.shape[-1] == 4
        assert float(attention[1, ..., 2:].detach().abs().sum()) == 0.0
    else:
        out = model(_IMAGES)
        assert out.shape == (2, 10)
    return out


def _zero_grad_ok(card: Card, param: str) -> bool:
    allowed = card.conformance.get("zero_grad_ok", {})
    return any(param == key or param.startswith(key + ".") for key in allowed)


@pytest.mark.parametrize(("backbone", "name"), _CASES)
def test_every_mechanism_runs_in_its_backbone_or_is_refused_by_the_rule(backbone: str, name: str) -> None:
    """A mechanism of the backbone's family runs forward and backward in it: output shape, finite
    values, a finite non-zero gradient on every mechanism parameter (except those its card declares
    structurally zero at init), and causality in the LM; or it is refused, before anything is built,
    by the rule, which must name the card fact that rules it out."""
    cls, build = _BACKBONES[backbone]
    card = attnzoo.card(name)
    reason = refusal(name, **cls.HOSTS)
    expected = _expected_refusal(card, cls.HOSTS)
    if expected is not None or reason is not None:
        assert reason is not None and expected is not None and expected in reason, (reason, expected)
        with pytest.raises(ValueError, match=re.escape(reason)):
            build(name)
        return
    torch.manual_seed(0)
    model = build(name).train()
    mechanisms = [m for m in model.modules() if isinstance(m, attnzoo.mechanism_class(name))]
    calls: list[nn.Module] = []
    for m in mechanisms:
        m.register_forward_hook(lambda mod, args, out: calls.append(mod))
    out = _run(backbone, model)
    assert mechanisms and calls == mechanisms, "every hosted mechanism runs once per forward"
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for i, m in enumerate(mechanisms):
        for pname, p in m.named_parameters():
            assert p.grad is not None, f"mechanism {i}: no gradient reached {pname}"
            assert torch.isfinite(p.grad).all(), f"mechanism {i}: non-finite gradient on {pname}"
            assert _zero_grad_ok(card, pname) or bool(p.grad.any()), f"mechanism {i}: zero grad on {pname}"
    if backbone == "CausalLM":
        model.eval()
        tokens = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(6))
        changed = tokens.clone()
        changed[:, 9:] = (changed[:, 9:] + 1) % 16
        with torch.no_grad():
            before, after = model(tokens), model(changed)
        torch.testing.assert_close(after[:, :9], before[:, :9], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(after[:, 9:], before[:, 9:])


def test_the_rule_refuses_some_mechanism_for_each_kind_of_fact() -> None:
    """The rule is not vacuous: each fact it reads rules out some registered mechanism somewhere."""
    reasons = [refusal(n, **_BACKBONES[b][0].HOSTS) for b, n in _CASES]
    for phrase in ("works on", "has no causal variant", "is causal only", "needs the forward input"):
        assert any(r is not None and phrase in r for r in reasons), phrase
    assert "is a feature_map; this backbone takes token_mixer" in str(refusal("se", **ViTTiny.HOSTS))
