"""Backbones with a pluggable mechanism: building from cards, shapes, causality, masking, and
every registered mechanism of the right family either plugs in or fails with a clear error."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.models import CausalLM, MILClassifier, SmallCNN, ViTTiny, build_mechanism, mechanism_kwargs
from attnzoo.models.blocks import BaseConv


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
        build_mechanism("mhsa", 10, family="token_mixer")
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


def _plugs(build, run) -> None:
    """Build and run, or fail with the builder's clear ValueError (or the mechanism's own
    ValueError for an input size it does not support, e.g. a window larger than the grid)."""
    try:
        model = build()
    except ValueError as exc:
        clear = ("cannot build mechanism", "works on", "causal", "cannot be used in")
        assert any(m in str(exc) for m in clear)
        return
    try:
        run(model)
    except ValueError as exc:
        assert str(exc)


@pytest.mark.parametrize("name", attnzoo.list_mechanisms("token_mixer"))
def test_every_token_mixer_plugs_in(name: str) -> None:
    card = attnzoo.card(name)
    if card.spatial_dims == 1 and card.causal:
        _plugs(lambda: CausalLM(16, 32, 1, name, max_len=16), lambda m: m(torch.randint(0, 16, (1, 16))))
    _plugs(lambda: ViTTiny((8, 8), 2, 1, 10, 32, 1, name), lambda m: m(torch.randn(1, 1, 8, 8)))


@pytest.mark.parametrize("name", attnzoo.list_mechanisms("feature_map"))
def test_every_feature_map_plugs_in(name: str) -> None:
    _plugs(lambda: SmallCNN(1, 10, (16, 32), name), lambda m: m(torch.randn(2, 1, 8, 8)))


@pytest.mark.parametrize("name", attnzoo.list_mechanisms("pooling"))
def test_every_pooling_plugs_in(name: str) -> None:
    def run(m: MILClassifier) -> None:
        logits, _ = m(torch.randn(2, 4, 1, 8, 8), torch.tensor([[True] * 4, [True, True, False, False]]))
        assert logits.shape == (2,)

    _plugs(lambda: MILClassifier(1, 32, name), run)
