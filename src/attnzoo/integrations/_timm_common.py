"""Pieces shared by the timm ViT and CNN adapters: family checks, building a mechanism with errors
that name the slot, and the ``attn_drop`` child through which attention maps reach timm's
:class:`~timm.utils.AttentionExtract`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

import attnzoo
from attnzoo.capture import capture
from attnzoo.integrations import IntegrationError
from attnzoo.registry import Card

__all__ = [
    "AttentionMaps",
    "build",
    "check_options",
    "constructor_params",
    "expose",
    "family_fit",
    "require_family",
]

_FAMILY_FIT = {
    "token_mixer": "a token mixer goes into a ViT block: vit_attention({name!r}) or swap(vit, {name!r})",
    "feature_map": "a feature_map mechanism goes into a CNN block: attn_layer({name!r}) or "
    "swap(cnn, {name!r})",
    "gate": "a gate needs a gating signal g besides x, and timm calls its attention slots with x alone, "
    "so no timm slot fits it",
    "pooling": "a pooling mechanism reduces (B, N, C) to a (B, C_out) vector, and a timm attention slot "
    "must return its input's shape, so no timm slot fits it",
    "cross_attention": "cross-attention reads a second (context) sequence, and timm's attention slots pass "
    "one tensor (self-attention), so no timm slot fits it",
}


def family_fit(card: Card) -> str:
    """Which timm slot ``card``'s family fits, or why none does."""
    return _FAMILY_FIT[card.family].format(name=card.name)


def require_family(name: str, family: str, slot: str) -> Card:
    """The card of ``name`` if it is of ``family``; otherwise an :class:`IntegrationError` that says
    which slot its family fits (``slot`` names the slot asked for)."""
    card = attnzoo.card(name)
    if card.family != family:
        raise IntegrationError(
            f"{slot} takes a {family} mechanism; {card.name!r} is a {card.family}: {family_fit(card)}"
        )
    return card


def constructor_params(cls: Callable[..., nn.Module]) -> set[str]:
    """Keyword names the constructor of ``cls`` accepts (without ``self``)."""
    return {p.name for p in inspect.signature(cls).parameters.values() if p.kind is not p.VAR_POSITIONAL}


def check_options(card: Card, kwargs: Mapping[str, Any], reserved: Mapping[str, str]) -> None:
    """Refuse options the mechanism does not take and options the timm model supplies (``reserved``:
    name -> where it comes from)."""
    for key, origin in reserved.items():
        if key in kwargs:
            raise IntegrationError(
                f"{key} comes from the timm model ({origin}); do not pass it for {card.name!r}"
            )
    params = constructor_params(attnzoo.mechanism_class(card.name))
    unknown = sorted(set(kwargs) - params)
    if unknown:
        raise IntegrationError(
            f"{card.name!r} has no option(s) {unknown}; its options are {sorted(params)} "
            f"(attnzoo.card({card.name!r}).tiny shows a working set)"
        )


def build(card: Card, kwargs: Mapping[str, Any], where: str) -> nn.Module:
    """``attnzoo.create(card.name, **kwargs)``, with a constructor error re-raised as an
    :class:`IntegrationError` that names ``where`` (the slot) and the arguments tried."""
    try:
        return attnzoo.create(card.name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise IntegrationError(f"cannot build {card.name!r} for {where} with {dict(kwargs)}: {exc}") from exc


class AttentionMaps(nn.Module):
    """Identity on attention probabilities ``(B, h, N_q, N_k)``: while it has forward hooks (e.g.
    those of ``timm.utils.AttentionExtract(model, method="hook")``), its owner computes the mechanism
    under :class:`attnzoo.capture` and passes every recorded attention matrix through it, in the
    order computed. It holds no state and changes no output."""

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return probs


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def expose(maps: AttentionMaps, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()``; when ``maps`` is hooked, the attention matrices recorded during ``fn`` are passed
    through ``maps`` afterwards (detached, probabilities before dropout)."""
    if not _hooked(maps):
        return fn()
    with capture() as cap:
        out = fn()
    for rec in cap.records:
        maps(rec.probs)
    return out
