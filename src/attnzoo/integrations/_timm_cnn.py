"""timm CNN attention slots: the classes :func:`attnzoo.integrations.timm.attn_layer` makes and the
slots :func:`~attnzoo.integrations.timm.swap` replaces in a built CNN. The design is described in
:mod:`attnzoo.integrations.timm`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from timm.data import resolve_model_data_config
from timm.layers.cbam import CbamModule, LightCbamModule
from timm.layers.coord_attn import CoordAttn, EfficientLocalAttn, SimpleCoordAttn, StripAttn
from timm.layers.eca import CecaModule, EcaModule
from timm.layers.gather_excite import GatherExcite
from timm.layers.global_context import GlobalContext
from timm.layers.non_local_attn import BatNonLocalAttn, NonLocalAttn
from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
from torch import nn

import attnzoo
from attnzoo.integrations import IntegrationError
from attnzoo.integrations._timm_common import AttentionMaps, build, check_options, expose, require_family
from attnzoo.registry import Card

__all__ = ["CNN_SLOT_TYPES", "SlotInput", "TimmCNNAttention", "cnn_attention_class", "slot_inputs"]

CNN_SLOT_TYPES: tuple[type[nn.Module], ...] = (
    SEModule,
    EffectiveSEModule,
    EcaModule,
    CecaModule,
    GatherExcite,
    GlobalContext,
    CbamModule,
    LightCbamModule,
    CoordAttn,
    SimpleCoordAttn,
    EfficientLocalAttn,
    StripAttn,
    NonLocalAttn,
    BatNonLocalAttn,
)
"""The timm modules that ``timm.layers.create_attn`` builds for a CNN block's attention (its
shape-preserving channel / spatial / non-local attention, ``attn_layer='se'``, ``'eca'``, ...)."""


def _tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(_tensors(v) for v in value)


def _check_single_input(card: Card, module: nn.Module) -> None:
    """A CNN slot calls ``module(x)``: refuse a mechanism that, as built, needs more forward inputs."""
    example = getattr(module, "example_kwargs", None)
    if example is None:
        return
    extra = example(1, (4, 4), dtype=torch.float32, device=None, generator=None)
    needed = sorted(k for k, v in extra.items() if _tensors(v))
    if needed:
        raise IntegrationError(
            f"{card.name!r}, as configured, needs the forward input(s) {needed} besides x, and a timm "
            "CNN attention slot calls it with x alone; configure it to need none "
            f"(see attnzoo.card({card.name!r}))"
        )


class TimmCNNAttention(nn.Module):
    """timm's CNN attention contract around an attnzoo feature-map mechanism (the base of the classes
    :func:`~attnzoo.integrations.timm.attn_layer` returns).

    ``cls(channels, device=None, dtype=None)`` as ``timm.layers.create_attn`` calls it;
    ``forward(x (B, C, H, W)) -> (B, C, H, W)``. Children: ``mechanism`` (the attnzoo module) and
    ``attn_drop`` (:class:`AttentionMaps`, where ``AttentionExtract`` finds its attention maps).
    """

    mechanism_name: ClassVar[str]
    mechanism_kwargs: ClassVar[Mapping[str, Any]]

    def __init__(
        self,
        channels: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        card = attnzoo.card(self.mechanism_name)
        if timm_kwargs:
            raise IntegrationError(
                f"the timm block passed {sorted(timm_kwargs)} to the {card.name!r} attention layer, which it "
                f"cannot honour; set {card.name!r}'s own options in attn_layer({card.name!r}, ...)"
            )
        where = f"a timm CNN attention slot with {channels} channels"
        self.mechanism = build(card, {"channels": channels, **self.mechanism_kwargs}, where)
        _check_single_input(card, self.mechanism)
        self.channels = channels
        self.attn_drop = AttentionMaps()
        self.to(device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"mechanism={self.mechanism_name!r}, channels={self.channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise IntegrationError(f"x must be a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        return expose(self.attn_drop, lambda: self.mechanism(x))


def cnn_attention_class(name: str, kwargs: Mapping[str, Any]) -> type[TimmCNNAttention]:
    """The :class:`TimmCNNAttention` subclass for mechanism ``name`` with options ``kwargs``."""
    card = require_family(name, "feature_map", "a timm CNN attention slot")
    if card.spatial_dims != 2:
        raise IntegrationError(
            f"{card.name!r} works on {card.spatial_dims}-D feature maps; timm's CNN blocks carry 2-D maps "
            "(B, C, H, W)"
        )
    check_options(card, kwargs, {"channels": "the channels of the block it sits in"})
    mech_cls = attnzoo.mechanism_class(card.name)
    cls_name = f"{mech_cls.__name__}CNNAttention"
    namespace = {
        "mechanism_name": card.name,
        "mechanism_kwargs": dict(kwargs),
        "__module__": "attnzoo.integrations.timm",
        "__qualname__": cls_name,
        "__doc__": f"timm CNN attention running attnzoo's {card.name!r} with {dict(kwargs)}: {card.summary}",
    }
    return type(cls_name, (TimmCNNAttention,), namespace)


class SlotInput(NamedTuple):
    """What a CNN attention slot receives: channels C of its ``(B, C, H, W)`` input, device, dtype."""

    channels: int
    device: torch.device
    dtype: torch.dtype


def slot_inputs(model: nn.Module, slots: list[tuple[str, nn.Module]]) -> dict[str, SlotInput]:
    """The input of every slot (``{path: SlotInput}``) in one forward of ``model`` (eval mode, no
    gradients) on a zero image of its data config's ``input_size`` (with ``model.in_chans`` channels
    when it has that attribute).

    timm's attention modules do not all record their channels (``EcaModule`` has none), so the
    channels are read off the model's own forward."""
    seen: dict[str, SlotInput] = {}

    def keep(path: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            seen[path] = SlotInput(int(x.shape[1]), x.device, x.dtype)

        return hook

    param = next(model.parameters(), None)
    if param is None:
        raise IntegrationError(
            f"{type(model).__name__} has no parameters, so it has no attention slot to swap"
        )
    c, h, w = resolve_model_data_config(model)["input_size"]
    c = int(getattr(model, "in_chans", c))
    image = torch.zeros(1, c, h, w, device=param.device, dtype=param.dtype)
    flags = {m: m.training for m in model.modules()}
    handles = [module.register_forward_pre_hook(keep(path)) for path, module in slots]
    try:
        model.eval()
        with torch.no_grad():
            model(image)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise IntegrationError(
            f"could not run {type(model).__name__} once on a {tuple(image.shape)} zero image to read the "
            f"channels of its attention slots: {exc}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
    missing = [path for path, _ in slots if path not in seen]
    if missing:
        raise IntegrationError(
            f"attention slot(s) {missing} did not run in a forward of the model, so their "
            "channels are unknown"
        )
    return seen
