"""attnzoo mechanisms as timm attention layers, and in-place swaps of built timm models.

timm's own hook points are used as they are::

    import timm
    from attnzoo.integrations.timm import attn_layer, bind, swap, vit_attention

    vit = timm.create_model("vit_tiny_patch16_224", attn_layer=vit_attention("mhsa"))
    vit = bind(timm.create_model("vit_tiny_patch16_224",
                                 attn_layer=vit_attention("neighborhood_attention_2d", kernel_size=7)))
    cnn = timm.create_model("resnet18", block_args=dict(attn_layer=attn_layer("eca", k_size=5)))
    swap(timm.create_model("vit_small_patch16_224"), "mhsa")      # in place; same outputs as before
    swap(timm.create_model("seresnet18"), "cbam", reduction=8)    # every SE module becomes CBAM

**ViT attention** (:func:`vit_attention`, token mixers that are not ``causal_only``): timm's
``Block`` calls ``cls(dim, num_heads=, qkv_bias=, qk_norm=, scale_norm=, proj_bias=, attn_drop=,
proj_drop=, norm_layer=, device=, dtype=)`` and ``forward(x, attn_mask=None, is_causal=False)``.
``dim`` is always the model's. ``num_heads``, ``qkv_bias``, ``attn_drop`` and ``proj_drop`` go to
the mechanism when its constructor takes them (options passed to :func:`vit_attention` win);
``proj_drop`` of a mechanism without one is applied to its output; ``proj_bias`` and ``qkv_bias``
of a mechanism without such an option leave its projections as designed. What a mechanism cannot
honour raises :class:`~attnzoo.integrations.IntegrationError`: ``qk_norm=True`` (only
``moh_attention`` has it: its own ``nn.LayerNorm``), ``scale_norm=True``, ``attn_drop > 0``
without attention dropout, and in ``forward`` any ``attn_mask`` or ``is_causal=True``.
``device``/``dtype`` are applied with ``.to()`` after building. 1-D mixers mix the whole token
sequence, prefix tokens included, non-causally. Mechanism forward inputs beyond ``x`` (only
``region_attention``'s ``region_map``) are given once, as a fixed ``(H, W)`` map of the patch grid.

**2-D mixers** read the ``(H, W)`` patch grid from the model, never from the user: :func:`bind`
(which :func:`swap` calls) puts a forward hook on the model's timm ``PatchEmbed`` that records the
grid of each image it embeds (``dynamic_feat_size`` of the image size, so ``dynamic_img_size=True``
works), and the mixers check ``N == num_prefix_tokens + H*W`` before every call. Prefix tokens
(class and register tokens) are handled one way for every 2-D mixer: the ``H*W`` patch tokens are
mixed by the 2-D mixer alone, and the prefix tokens are updated by a global softmax attention over
all ``N`` tokens (``prefix_attn``: attnzoo's softmax kernel with timm ``Attention``'s ``qkv``/``proj``
layout and the model's heads). A 2-D mixer is defined on a grid and the prefix tokens have no place
on it; this keeps each mixer exactly as its paper defines it on the grid, gives the class token the
global read-out it has in a ViT, and costs ``O(P N C)`` (P prefix tokens). What it changes — patch
tokens no longer read the prefix tokens — is a ledger line of every 2-D mixer's card. A mixer with
native prefix support (a constructor option ``num_prefix_tokens``: ``agent_attention``) uses it
instead. The number of prefix tokens is fixed at construction (option ``num_prefix_tokens``, default
1 = timm's class token); :func:`bind` and :func:`swap` check or set it from ``model.num_prefix_tokens``.

**CNN attention** (:func:`attn_layer`, 2-D ``feature_map`` mechanisms): ``cls(channels,
device=, dtype=)`` as ``timm.layers.create_attn`` calls it, ``forward(x (B, C, H, W))``. A *CNN
attention slot* is a module of one of the classes ``create_attn`` builds for a block's attention
(SE, effective SE, ECA, CECA, gather-excite, global context, CBAM, light CBAM, coordinate / ELA /
strip attention, non-local, BAT: :data:`CNN_SLOT_TYPES`), e.g. a
ResNet block's ``se`` or a VoVNet block's ``attn``, or an attnzoo module an earlier swap put there.
Gates, pooling and cross-attention fit no timm slot (their contracts need a second input or change
the shape) and raise an error that says why.

**swap** replaces every ViT ``Attention`` (token mixers) or every CNN attention slot (feature-map
mechanisms) of a built model. All replacements are built first and installed only when every one
was built, so a failure leaves the model unchanged. Weights carry over where the mechanism has
timm's projections (``qkv = Linear(C, 3C)`` split as ``[q | k | v] x heads``, ``proj = Linear(C, C)``:
:data:`SAME_PROJECTIONS`) and always into ``prefix_attn``; a mechanism whose output projection has
a bias where timm's has none gets a zero bias. A swap to ``mhsa`` reproduces the model's outputs.
CNN slots are built fresh (their channels are read off one forward of the model).

**Attention maps**: every attnzoo module has an ``attn_drop`` child (named after the timm module
whose output :class:`timm.utils.AttentionExtract` reads by default with ``method="hook"``); while it
is hooked, the module runs its mechanism under :class:`attnzoo.capture` and passes each attention
matrix it records — probabilities ``(B, h, N_q, N_k)`` before dropout, in the order computed — through
it. ``AttentionExtract(model, method="hook")`` keeps the last one per module: the mixer's map for
softmax-type mixers (for ``agent_attention`` the queries-to-agents map, ``(B, h, N, n)``), nothing
for mechanisms without an attention matrix (linear attention, Based, ViG, NiNformer, SE, ...).
``attnzoo.capture(model)`` records them all under ``blocks.{i}.attn.mechanism`` and
``blocks.{i}.attn.prefix_attn``. The modules are registered with timm as fx leaves, so timm's fx
feature extraction traces a swapped model; fx-based ``AttentionExtract`` (its default) finds no
``attn.softmax`` node in them: use ``method="hook"``.

Limitations: the classes are made per call, so save models with ``state_dict()`` (pickling the
whole model needs the class); ``fix_init=True`` (which rescales ``attn.proj``) is not supported;
the grid is that of the last image the model embedded, so one model runs one forward at a time.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import Attention, PatchDropout, PatchEmbed, register_notrace_module
from torch import nn

import attnzoo
from attnzoo.integrations import IntegrationError
from attnzoo.integrations._timm_cnn import CNN_SLOT_TYPES, TimmCNNAttention, cnn_attention_class, slot_inputs
from attnzoo.integrations._timm_common import family_fit
from attnzoo.integrations._timm_vit import PatchGrid, TimmViTAttention, vit_attention_class

__all__ = [
    "CNN_SLOT_TYPES",
    "SAME_PROJECTIONS",
    "TimmCNNAttention",
    "TimmViTAttention",
    "attn_layer",
    "bind",
    "swap",
    "vit_attention",
]

SAME_PROJECTIONS: frozenset[str] = frozenset(
    {
        "linear_attention",
        "mhsa",
        "moh_attention",
        "neighborhood_attention_1d",
        "neighborhood_attention_2d",
        "region_attention",
        "reversed_attention",
        "s2_attention",
        "sliding_window",
    }
)
"""Token mixers whose ``qkv``/``proj`` have timm ``Attention``'s layout and roles; :func:`swap`
carries timm's weights into them."""

register_notrace_module(TimmViTAttention)
register_notrace_module(TimmCNNAttention)


def vit_attention(name: str, **kwargs: Any) -> type[TimmViTAttention]:
    """A class with timm's ViT attention contract running token mixer ``name``.

    Args:
        name: a registered token mixer (or alias) that is not causal only.
        kwargs: the mechanism's own options (``dim`` comes from the model); for a 2-D mixer also
            ``num_prefix_tokens`` (default 1: the class token) and, for ``region_attention``, a
            fixed ``region_map (H, W)`` over the patch grid.

    Returns:
        a ``TimmViTAttention`` subclass for ``VisionTransformer(attn_layer=...)``; 2-D mixers need
        :func:`bind` on the built model.

    Raises:
        UnknownMechanismError: ``name`` is not registered (the message lists the closest names).
        IntegrationError: the mechanism is not a token mixer, is causal only, or an option does not fit.
    """
    return vit_attention_class(name, kwargs)


def attn_layer(name: str, **kwargs: Any) -> type[TimmCNNAttention]:
    """A class with timm's CNN attention contract running 2-D feature-map mechanism ``name``.

    Args:
        name: a registered ``feature_map`` mechanism with ``spatial_dims == 2``.
        kwargs: the mechanism's own options (``channels`` comes from the block).

    Returns:
        a ``TimmCNNAttention`` subclass for ``create_model(..., block_args=dict(attn_layer=...))``.

    Raises:
        UnknownMechanismError: ``name`` is not registered (the message lists the closest names).
        IntegrationError: the mechanism's family or dimensionality fits no CNN slot, or an option
            is unknown.
    """
    return cnn_attention_class(name, kwargs)


def _grid_modules(model: nn.Module) -> list[tuple[str, TimmViTAttention]]:
    return [
        (p, m) for p, m in model.named_modules() if isinstance(m, TimmViTAttention) and m.spatial_dims == 2
    ]


def _check_grid_model(model: nn.Module, modules: list[tuple[str, TimmViTAttention]]) -> None:
    """Refuse a model whose patch grid or prefix tokens the 2-D ``modules`` cannot rely on."""
    kind = type(model).__name__
    if not isinstance(getattr(model, "patch_embed", None), PatchEmbed):
        raise IntegrationError(
            f"{kind} has no timm PatchEmbed at model.patch_embed, from which 2-D mixers read the patch grid"
        )
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, bool) or not isinstance(prefix, int):
        raise IntegrationError(f"{kind} has no int num_prefix_tokens, so its prefix tokens are unknown")
    drop = getattr(model, "patch_drop", None)
    if isinstance(drop, PatchDropout) and drop.prob > 0:
        raise IntegrationError(
            f"{kind} drops patches (patch_drop_rate={drop.prob}), and a 2-D mixer needs the whole patch "
            "grid; build it with patch_drop_rate=0"
        )
    for path, module in modules:
        if module.num_prefix_tokens != prefix:
            raise IntegrationError(
                f"{path}: built for {module.num_prefix_tokens} prefix token(s), but the model has {prefix} "
                f"(class and register tokens); use vit_attention({module.mechanism_name!r}, "
                f"num_prefix_tokens={prefix})"
            )


def _attach(model: nn.Module, modules: list[tuple[str, TimmViTAttention]]) -> None:
    embed = model.patch_embed
    grid = getattr(embed, "attnzoo_patch_grid", None)
    if grid is None:
        grid = PatchGrid(embed)
        embed.register_forward_hook(grid, with_kwargs=True)
        embed.attnzoo_patch_grid = grid
    for _, module in modules:
        module.patch_grid = grid


def bind(model: nn.Module) -> nn.Module:
    """Connect the 2-D attnzoo mixers of a timm ViT to its patch grid (see the module docstring).

    Needed once after ``timm.create_model(..., attn_layer=vit_attention(<2-D mixer>))``; 1-D mixers
    need nothing; :func:`swap` binds by itself. Returns ``model``.

    Raises:
        IntegrationError: the model has no 2-D attnzoo mixer, no timm ``PatchEmbed`` at
            ``patch_embed``, drops patches, or has another number of prefix tokens than the mixers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = _grid_modules(model)
    if not modules:
        raise IntegrationError(
            f"{type(model).__name__} has no 2-D attnzoo mixer to bind (1-D mixers need no patch grid)"
        )
    _check_grid_model(model, modules)
    _attach(model, modules)
    return model


def _timm_args(path: str, old: nn.Module) -> dict[str, Any]:
    """The constructor arguments timm's ``Block`` gave the attention at ``path``."""
    if isinstance(old, TimmViTAttention):
        args = dict(old.timm_args)
    else:
        dim = old.qkv.in_features
        if old.attn_dim != dim or old.proj.out_features != dim:
            raise IntegrationError(
                f"{path}: attention width {old.attn_dim} -> {old.proj.out_features} differs from the model "
                f"width {dim} (attn_head_dim / dim_out); attnzoo token mixers keep the width"
            )
        if getattr(old, "gate", None) is not None:
            raise IntegrationError(
                f"{path}: gated=True (a sigmoid gate on the attention output) cannot be "
                "honoured by an attnzoo mixer"
            )
        qk_norm = not isinstance(old.q_norm, nn.Identity)
        args = {
            "dim": dim,
            "num_heads": old.num_heads,
            "qkv_bias": old.qkv.bias is not None,
            "qk_norm": qk_norm,
            "scale_norm": not isinstance(old.norm, nn.Identity),
            "proj_bias": old.proj.bias is not None,
            "attn_drop": old.attn_drop.p,
            "proj_drop": old.proj_drop.p,
            "norm_layer": type(old.q_norm) if qk_norm else None,
        }
    weight = next(old.parameters())
    return {**args, "device": weight.device, "dtype": weight.dtype}


def _projections(module: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    if isinstance(module, Attention):
        return module.qkv, module.proj
    if isinstance(module, TimmViTAttention) and module.mechanism_name in SAME_PROJECTIONS:
        return module.mechanism.qkv, module.mechanism.proj
    return None


@torch.no_grad()
def _carry(path: str, old: nn.Module, new: TimmViTAttention) -> None:
    source = _projections(old)
    targets = [_projections(new), (new.prefix_attn.qkv, new.prefix_attn.proj) if new.prefix_attn else None]
    for target in (t for t in targets if t is not None and source is not None):
        for label, src, dst in zip(("qkv", "proj"), source, target):
            if src.weight.shape != dst.weight.shape:
                raise IntegrationError(
                    f"{path}: cannot carry {label}.weight {tuple(src.weight.shape)} into "
                    f"{tuple(dst.weight.shape)}; pass carry_weights=False"
                )
            if src.bias is not None and dst.bias is None:
                raise IntegrationError(
                    f"{path}: cannot carry {label}.bias: the {new.mechanism_name!r} {label} was built "
                    "without a bias; pass carry_weights=False or build it with a bias"
                )
            dst.weight.copy_(src.weight)
            if dst.bias is not None and src.bias is not None:
                dst.bias.copy_(src.bias)
            elif dst.bias is not None:
                dst.bias.zero_()


def _install(model: nn.Module, replacements: list[tuple[str, nn.Module]]) -> None:
    for path, new in replacements:
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)


def _slots(model: nn.Module, types: tuple[type[nn.Module], ...]) -> list[tuple[str, nn.Module]]:
    found = [(p, m) for p, m in model.named_modules() if isinstance(m, types)]
    if any(not p for p, _ in found):
        raise IntegrationError(
            "the model itself is an attention module; swap replaces the attention inside a model"
        )
    return found


def _swap_vit(model: nn.Module, name: str, carry_weights: bool, kwargs: dict[str, Any]) -> nn.Module:
    kind = type(model).__name__
    slots = _slots(model, (Attention, TimmViTAttention))
    if not slots:
        cnn = " Its CNN attention slots take feature_map mechanisms." if _slots(model, CNN_SLOT_TYPES) else ""
        raise IntegrationError(
            f"{kind} has no timm Attention (ViT blocks[i].attn) to replace with token mixer {name!r}.{cnn}"
        )
    card = attnzoo.card(name)
    if card.spatial_dims == 2:
        prefix = getattr(model, "num_prefix_tokens", None)
        kwargs = {"num_prefix_tokens": prefix, **kwargs} if isinstance(prefix, int) else kwargs
    cls = vit_attention(name, **kwargs)
    replacements: list[tuple[str, nn.Module]] = []
    for path, old in slots:
        try:
            new = cls(**_timm_args(path, old))
        except IntegrationError as exc:
            raise IntegrationError(f"{path}: {exc}") from exc
        new.train(old.training)
        if carry_weights:
            _carry(path, old, new)
        replacements.append((path, new))
    grid = [(path, new) for path, new in replacements if new.spatial_dims == 2]
    if grid:
        _check_grid_model(model, grid)
    _install(model, replacements)
    if grid:
        _attach(model, grid)
    return model


def _swap_cnn(model: nn.Module, name: str, kwargs: dict[str, Any]) -> nn.Module:
    kind = type(model).__name__
    slots = _slots(model, (*CNN_SLOT_TYPES, TimmCNNAttention))
    if not slots:
        vit = " Its ViT attention takes token mixers." if _slots(model, (Attention,)) else ""
        raise IntegrationError(
            f"{kind} has no CNN attention slot (SE, ECA, CBAM, ... modules) to replace with {name!r}; timm's "
            "ResNets have one only when built with one, e.g. create_model('resnet18', "
            f"block_args=dict(attn_layer=attn_layer({name!r}))).{vit}"
        )
    cls = attn_layer(name, **kwargs)
    inputs = slot_inputs(model, slots)
    replacements: list[tuple[str, nn.Module]] = []
    for path, old in slots:
        slot = inputs[path]
        try:
            new = cls(slot.channels, device=slot.device, dtype=slot.dtype)
        except IntegrationError as exc:
            raise IntegrationError(f"{path}: {exc}") from exc
        new.train(old.training)
        replacements.append((path, new))
    _install(model, replacements)
    return model


def swap(model: nn.Module, name: str, *, carry_weights: bool = True, **kwargs: Any) -> nn.Module:
    """Replace, in place, every attention of a built timm model with mechanism ``name``.

    A token mixer replaces every timm ViT ``Attention`` (and attnzoo ViT attention of an earlier
    swap); a 2-D mixer is bound to the model's patch grid and its ``num_prefix_tokens`` set from the
    model. A feature-map mechanism replaces every CNN attention slot (see the module docstring).
    Nothing is installed unless every replacement was built.

    Args:
        model: a built timm model.
        name: registered mechanism name or alias.
        carry_weights: copy timm's ``qkv``/``proj`` weights into mechanisms of
            :data:`SAME_PROJECTIONS` and into the prefix attention of 2-D mixers.
        kwargs: the mechanism's own options, as for :func:`vit_attention` / :func:`attn_layer`.

    Returns:
        ``model``.

    Raises:
        UnknownMechanismError: ``name`` is not registered (the message lists the closest names).
        IntegrationError: nothing to swap, the family fits no slot, or a replacement cannot be built.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(carry_weights, bool):
        raise TypeError(f"carry_weights must be a bool, got {type(carry_weights).__name__}")
    card = attnzoo.card(name)
    if card.family == "token_mixer":
        return _swap_vit(model, card.name, carry_weights, dict(kwargs))
    if card.family == "feature_map":
        return _swap_cnn(model, card.name, dict(kwargs))
    raise IntegrationError(
        f"swap takes a token_mixer (ViT attention) or feature_map (CNN attention) mechanism; "
        f"{card.name!r} is a {card.family}: {family_fit(card)}"
    )
