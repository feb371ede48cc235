"""attnzoo.integrations.timm: attnzoo mechanisms in timm ViTs and ResNets, swaps of built models,
and their attention maps through timm's AttentionExtract and attnzoo.capture."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo.integrations import IntegrationError
from attnzoo.registry import UnknownMechanismError

timm = pytest.importorskip("timm")

from timm.layers import Attention  # noqa: E402
from timm.models import get_graph_node_names  # noqa: E402
from timm.utils import AttentionExtract  # noqa: E402

from attnzoo.integrations.timm import (  # noqa: E402
    SAME_PROJECTIONS,
    TimmCNNAttention,
    TimmViTAttention,
    attn_layer,
    bind,
    swap,
    vit_attention,
)

VIT = {"pretrained": False, "img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 4}
"""A tiny vit_tiny_patch16_224: 4 x 4 patch grid + class token = 17 tokens of width 32, 4 heads."""

RESNET = {
    "pretrained": False,
    "layers": (1, 1, 1, 1),
    "channels": (16, 16, 32, 32),
    "stem_width": 8,
    "output_stride": 8,
    "num_classes": 3,
    "pretrained_cfg_overlay": {"input_size": (3, 16, 16)},
}
"""A tiny resnet18: one BasicBlock per stage (16, 16, 32, 32 channels); 16 x 16 images -> 2 x 2 maps
(swap's channel probe runs on the data config's 16 x 16)."""

QUADRANTS = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
"""region_attention's fixed region map on the 4 x 4 patch grid: its four 2 x 2 quadrants."""

MIXER_ADAPT: dict[str, dict[str, Any]] = {
    "ninformer_gating": {"seq_len": 17},  # fixed length: the ViT's 1 + 16 tokens (tiny: 7)
    "region_attention": {"region_map": QUADRANTS},  # a per-image input; fixed over the grid here
}
"""Where a card's tiny kwargs do not fit the test ViT."""

FEATURE_ADAPT: dict[str, dict[str, Any]] = {
    "sdanet": {"num_levels": 1, "refine_level": 0},  # a CNN slot passes one map, not a pyramid
    "pat_sf": {"n_div": 4},  # channels - channels // n_div must be divisible by num_heads=2
}
"""Where a card's tiny kwargs do not fit the test ResNet."""

VIT_MIXERS = [n for n in attnzoo.list_mechanisms("token_mixer") if not attnzoo.card(n).causal_only]
FEATURE_MAPS = [n for n in attnzoo.list_mechanisms("feature_map") if attnzoo.card(n).spatial_dims == 2]


def _options(name: str, adapt: dict[str, dict[str, Any]], from_model: tuple[str, ...]) -> dict[str, Any]:
    tiny = {k: v for k, v in attnzoo.card(name).tiny.items() if k not in from_model}
    return {**tiny, **adapt.get(name, {})}


def mixer_options(name: str) -> dict[str, Any]:
    """The card's tiny options, with the ViT's width and heads."""
    return _options(name, MIXER_ADAPT, ("dim", "num_heads"))


def feature_options(name: str) -> dict[str, Any]:
    """The card's tiny options, with the block's channels."""
    return _options(name, FEATURE_ADAPT, ("channels",))


def vit(**kwargs: Any) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", **{**VIT, "num_classes": 5, **kwargs})


def resnet(**kwargs: Any) -> nn.Module:
    return timm.create_model("resnet18", **{**RESNET, **kwargs})


def images(size: int = 16, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def swapped(model: nn.Module, name: str, **kwargs: Any) -> nn.Module:
    return swap(copy.deepcopy(model), name, **kwargs)


def unfused(model: nn.Module) -> nn.Module:
    """timm's Attention materialises its probabilities (for AttentionExtract) only unfused."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = False
    return model


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"reg_tokens": 4, "class_token": False, "global_pool": "avg", "depth": 3},
        {"qkv_bias": False, "proj_bias": False},
    ],
    ids=["class-token", "registers-avg-pool", "no-biases"],
)
def test_mhsa_swap_reproduces_the_vit(config: dict[str, Any]) -> None:
    ref = vit(**config).eval()
    model = swapped(ref, "mhsa")
    assert all(isinstance(b.attn, TimmViTAttention) for b in model.blocks)
    torch.testing.assert_close(model(images()), ref(images()), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("sliding_window", {"window": 16}),
        ("neighborhood_attention_1d", {"kernel_size": 17, "rel_pos_bias": False}),
    ],
)
def test_carried_weights_reproduce_the_vit_when_the_window_covers_every_token(
    name: str, options: dict[str, Any]
) -> None:
    ref = vit().eval()
    torch.testing.assert_close(swapped(ref, name, **options)(images()), ref(images()), atol=1e-5, rtol=0)


def test_full_grid_2d_mixer_without_prefix_tokens_reproduces_the_vit() -> None:
    ref = vit(class_token=False, global_pool="avg").eval()
    model = swapped(ref, "neighborhood_attention_2d", kernel_size=4, rel_pos_bias=False)
    assert model.blocks[0].attn.prefix_attn is None
    torch.testing.assert_close(model(images()), ref(images()), atol=1e-5, rtol=0)


def test_prefix_tokens_read_every_token_and_patch_tokens_only_the_grid() -> None:
    ref = vit(reg_tokens=2).eval()
    model = swapped(ref, "neighborhood_attention_2d", kernel_size=4, rel_pos_bias=False)
    model(images())  # the patch embedding records the 4 x 4 grid
    old, new = ref.blocks[0].attn, model.blocks[0].attn
    assert new.num_prefix_tokens == 3
    x = torch.randn(2, 19, 32)
    out = new(x)
    torch.testing.assert_close(out[:, :3], old(x)[:, :3], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 3:], old(x[:, 3:]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(SAME_PROJECTIONS))
def test_swap_carries_qkv_and_proj(name: str) -> None:
    ref = vit()
    model = swapped(ref, name, **mixer_options(name))
    for old, new in zip(ref.blocks, model.blocks):
        mech = new.attn.mechanism
        for a, b in ((old.attn.qkv, mech.qkv), (old.attn.proj, mech.proj)):
            torch.testing.assert_close(b.weight, a.weight, atol=0, rtol=0)
            torch.testing.assert_close(b.bias, a.bias, atol=0, rtol=0)


@pytest.mark.parametrize("name", [n for n in VIT_MIXERS if attnzoo.card(n).spatial_dims == 2])
def test_every_2d_mixer_card_says_what_the_timm_prefix_handling_changes(name: str) -> None:
    assert any(
        line.startswith("In a timm ViT (attnzoo.integrations.timm)") for line in attnzoo.card(name).ledger
    )


def test_a_second_swap_carries_the_weights_of_the_first() -> None:
    ref = vit().eval()
    model = swap(swapped(ref, "mhsa"), "neighborhood_attention_2d", kernel_size=3)
    new = model.blocks[1].attn
    for mod in (new.mechanism, new.prefix_attn):
        torch.testing.assert_close(mod.qkv.weight, ref.blocks[1].attn.qkv.weight, atol=0, rtol=0)


@pytest.mark.parametrize("name", VIT_MIXERS)
def test_every_bidirectional_token_mixer_trains_in_a_timm_vit(name: str) -> None:
    model = vit(attn_layer=vit_attention(name, **mixer_options(name)))
    if attnzoo.card(name).spatial_dims == 2:
        bind(model)
    model(images()).logsumexp(-1).sum().backward()
    mechanism = model.blocks[0].attn.mechanism
    assert mechanism.card.name == name
    grads = [p.grad for p in mechanism.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", FEATURE_MAPS)
def test_every_2d_feature_map_trains_in_a_timm_resnet(name: str) -> None:
    options = feature_options(name)
    built = resnet(block_args={"attn_layer": attn_layer(name, **options)})
    swapped_model = swap(resnet(block_args={"attn_layer": "se"}), name, **options)
    for model in (built, swapped_model):
        slots = [m for m in model.modules() if isinstance(m, TimmCNNAttention)]
        assert [s.channels for s in slots] == [16, 16, 32, 32]
        model(images()).logsumexp(-1).sum().backward()
        grads = [p.grad for s in slots for p in s.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_device_dtype_and_training_mode_reach_every_built_module() -> None:
    model = vit(dtype=torch.float64).train()
    model.blocks[1].eval()
    swap(model, "agent_attention", **mixer_options("agent_attention"))
    assert model.blocks[0].attn.training and not model.blocks[1].attn.training
    built = vit(attn_layer=vit_attention("biformer_bra", n_win=2, topk=2), dtype=torch.float64)
    cnn = resnet(block_args={"attn_layer": attn_layer("eca")}, dtype=torch.float64)
    assert {p.dtype for m in (model, built, cnn) for p in m.parameters()} == {torch.float64}
    assert model(images().double()).dtype == bind(built)(images().double()).dtype == torch.float64


def test_2d_mixers_follow_dynamic_image_sizes() -> None:
    model = bind(
        vit(dynamic_img_size=True, attn_layer=vit_attention("neighborhood_attention_2d", kernel_size=3))
    )
    for size, grid in ((16, (4, 4)), (24, (6, 6))):
        assert model(images(size)).shape == (2, 5)
        assert model.patch_embed.attnzoo_patch_grid.size == grid


def test_fx_tracing_of_a_swapped_vit_keeps_attnzoo_modules_as_leaves() -> None:
    model = swapped(vit(), "neighborhood_attention_2d", kernel_size=3)
    assert {"blocks.0.attn", "blocks.1.attn"} <= set(get_graph_node_names(model)[1])


def test_attention_extract_finds_the_maps_of_a_swapped_vit() -> None:
    ref = unfused(vit())
    expected = AttentionExtract(ref, method="hook")(images())
    found = AttentionExtract(swapped(ref, "mhsa"), method="hook")(images())
    assert list(found) == ["blocks.0.attn.attn_drop", "blocks.1.attn.attn_drop"]
    for key, probs in found.items():
        assert probs.shape == (2, 4, 17, 17)
        torch.testing.assert_close(probs, expected[key], atol=1e-6, rtol=0)


def test_attention_extract_returns_the_grid_map_of_a_2d_mixer() -> None:
    model = swapped(vit(), "neighborhood_attention_2d", kernel_size=3)
    found = AttentionExtract(model, method="hook")(images())
    probs = found["blocks.0.attn.attn_drop"]
    assert probs.shape == (2, 4, 16, 16)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 16))
    assert int((probs[0, 0] > 0).sum(-1).max()) == 9  # a 3 x 3 neighbourhood per patch


def test_capture_records_the_prefix_and_grid_attention_of_a_swapped_vit() -> None:
    model = swapped(vit(), "neighborhood_attention_2d", kernel_size=3).eval()
    with attnzoo.capture(model) as cap:
        out = model(images())
    assert cap.names() == [
        "blocks.0.attn.prefix_attn",
        "blocks.0.attn.mechanism",
        "blocks.1.attn.prefix_attn",
        "blocks.1.attn.mechanism",
    ]
    assert cap["blocks.0.attn.prefix_attn"][0].probs.shape == (2, 4, 1, 17)
    assert cap["blocks.0.attn.mechanism"][0].probs.shape == (2, 4, 16, 16)
    torch.testing.assert_close(model(images()), out)


def test_capture_of_a_cnn_slot() -> None:
    model = swap(resnet(block_args={"attn_layer": "se"}), "danet_pam").eval()
    with attnzoo.capture(model) as cap:
        model(images())
    assert cap.names() == [f"layer{i}.0.se.mechanism" for i in range(1, 5)]
    found = AttentionExtract(model, method="hook", names=["*se.attn_drop"])(images())
    torch.testing.assert_close(found["layer2.0.se.attn_drop"], cap["layer2.0.se.mechanism"][0].probs)


@pytest.mark.parametrize("factory", [vit_attention, attn_layer, lambda n: swap(vit(), n)])
def test_unknown_names_list_the_closest(factory: Any) -> None:
    with pytest.raises(UnknownMechanismError, match="closest: neighborhood_attention_2d"):
        factory("neighbourhood_attention_2d")


@pytest.mark.parametrize(
    ("factory", "name", "match"),
    [
        (vit_attention, "eca", r"feature_map.*attn_layer\('eca'\)"),
        (attn_layer, "mhsa", r"token_mixer.*vit_attention\('mhsa'\)"),
        (attn_layer, "attention_gate", "gating signal g"),
        (attn_layer, "attention_mil", "pooling.*reduces"),
        (vit_attention, "slot_attention", "cross-attention"),
        (attn_layer, "daunet_dual_attention", "3-D feature maps"),
        (vit_attention, "gla", "causal only"),
        (vit_attention, "lightning_attention", "causal only"),
    ],
)
def test_a_mechanism_that_does_not_fit_the_slot_says_why(factory: Any, name: str, match: str) -> None:
    with pytest.raises(IntegrationError, match=match):
        factory(name)


@pytest.mark.parametrize(
    ("model", "name", "match"),
    [
        (lambda: resnet(), "eca", "no CNN attention slot"),
        (lambda: resnet(block_args={"attn_layer": "se"}), "mhsa", "no timm Attention.*feature_map"),
        (lambda: vit(), "se", "no CNN attention slot.*token mixers"),
        (lambda: vit(), "gla", "causal only"),
        (lambda: vit(), "acmil", "pooling"),
        (lambda: Attention(32, num_heads=4), "mhsa", "the model itself"),
    ],
)
def test_swap_refuses_a_model_with_nothing_to_swap(model: Any, name: str, match: str) -> None:
    with pytest.raises(IntegrationError, match=match):
        swap(model(), name)


def test_a_failed_swap_leaves_the_model_unchanged() -> None:
    model = vit()
    model.blocks[1].attn = Attention(32, num_heads=1, qkv_bias=True)  # s2_attention needs an even head count
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(IntegrationError, match=r"blocks\.1\.attn: cannot build 's2_attention'.*even"):
        swap(model, "s2_attention", group_size=4)
    assert all(type(b.attn) is Attention for b in model.blocks)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not hasattr(model.patch_embed, "attnzoo_patch_grid")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"qk_norm": True}, "qk_norm=True"),
        ({"scale_attn_norm": True}, "scale_norm=True"),
        ({"attn_drop_rate": 0.1}, "attn_drop=0.1"),
    ],
)
def test_timm_arguments_a_mechanism_cannot_honour_are_refused(config: dict[str, Any], match: str) -> None:
    with pytest.raises(IntegrationError, match=match):
        vit(attn_layer=vit_attention("vig"), **config)
    with pytest.raises(IntegrationError, match=match):
        swap(vit(**config), "vig")


def test_timm_arguments_a_mechanism_has_are_passed_through() -> None:
    model = vit(
        attn_layer=vit_attention("moh_attention", shared_head=1, routed_head=2),
        qk_norm=True,
        attn_drop_rate=0.1,
        proj_drop_rate=0.2,
        qkv_bias=False,
    )
    mech = model.blocks[0].attn.mechanism
    assert isinstance(mech.q_norm, nn.LayerNorm) and mech.qkv.bias is None
    assert mech.attn_drop == 0.1 and mech.proj_drop.p == 0.2
    vig = vit(attn_layer=vit_attention("vig"), proj_drop_rate=0.2).blocks[0].attn
    assert vig.proj_drop.p == 0.2  # vig has no output dropout: the adapter applies it


def test_attention_masks_and_causal_calls_are_refused() -> None:
    model = swapped(vit(), "mhsa")
    with pytest.raises(IntegrationError, match="attn_mask cannot be honoured"):
        model(images(), attn_mask=torch.ones(17, 17, dtype=torch.bool))
    with pytest.raises(IntegrationError, match=r"is_causal=True cannot be honoured"):
        model(images(), is_causal=True)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dim": 32}, "dim comes from the timm model"),
        ({"window_size": 3}, r"no option\(s\) \['window_size'\]"),
        ({"causal": True}, "bidirectionally"),
        ({"num_prefix_tokens": -1}, "non-negative int"),
    ],
)
def test_bad_options_are_refused_when_the_class_is_made(options: dict[str, Any], match: str) -> None:
    with pytest.raises(IntegrationError, match=match):
        vit_attention("neighborhood_attention_2d", **options)


def test_a_2d_mixer_needs_its_model_s_patch_grid() -> None:
    model = vit(attn_layer=vit_attention("neighborhood_attention_2d", kernel_size=3))
    with pytest.raises(IntegrationError, match=r"call attnzoo\.integrations\.timm\.bind\(model\)"):
        model(images())
    bind(model)(images())
    with pytest.raises(IntegrationError, match=r"x has 10 tokens.*1 prefix token.*4x4"):
        model.blocks[0](torch.randn(2, 10, 32))
    with pytest.raises(IntegrationError, match="no 2-D attnzoo mixer"):
        bind(swapped(vit(), "mhsa"))


def test_bind_checks_the_prefix_tokens_and_patch_dropout() -> None:
    registers = vit(reg_tokens=4, attn_layer=vit_attention("vig"))
    with pytest.raises(IntegrationError, match=r"blocks\.0\.attn: built for 1 prefix.*num_prefix_tokens=5"):
        bind(registers)
    bind(vit(reg_tokens=4, attn_layer=vit_attention("vig", num_prefix_tokens=5)))(images())
    with pytest.raises(IntegrationError, match=r"patch_drop_rate=0\.5"):
        swap(vit(patch_drop_rate=0.5), "vig")
    with pytest.raises(IntegrationError, match="num_prefix_tokens=1"):
        swap(vit(), "agent_attention", num_prefix_tokens=2)


def test_forward_inputs_are_fixed_over_the_patch_grid() -> None:
    with pytest.raises(IntegrationError, match="needs the forward input region_map"):
        vit_attention("region_attention")
    with pytest.raises(TypeError, match=r"region_map must be a torch\.Tensor"):
        vit_attention("region_attention", region_map=[[0, 1]])
    model = swapped(vit(), "region_attention", region_map=torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(
        IntegrationError, match=r"region_map has shape \(3, 3\), but the patch grid is \(4, 4\)"
    ):
        model(images())


def test_weights_that_cannot_be_carried_are_refused() -> None:
    with pytest.raises(IntegrationError, match=r"cannot carry qkv\.bias.*carry_weights=False"):
        swap(vit(), "region_attention", region_map=QUADRANTS, bias=False)
    model = swap(vit(), "region_attention", region_map=QUADRANTS, bias=False, carry_weights=False)
    assert model.blocks[0].attn.mechanism.qkv.bias is None


def test_cnn_slot_arguments_are_checked() -> None:
    cls = attn_layer("se", reduction=4)
    with pytest.raises(IntegrationError, match=r"passed \['rd_ratio'\]"):
        cls(16, rd_ratio=0.25)
    with pytest.raises(IntegrationError, match="channels comes from the timm model"):
        attn_layer("se", channels=16)
    with pytest.raises(IntegrationError, match=r"needs the forward input\(s\) \['levels'\]"):
        resnet(block_args={"attn_layer": attn_layer("sdanet", hidden=8)})
    with pytest.raises(IntegrationError, match=r"layer1\.0\.se: cannot build 'pat_sf'"):
        swap(resnet(block_args={"attn_layer": "se"}), "pat_sf", n_div=5, num_heads=2)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        swap("resnet18", "se")  # type: ignore[arg-type]
