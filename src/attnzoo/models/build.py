"""Build any registered mechanism at a backbone's width from its card.

A backbone knows its width (``dim`` for token mixers and pooling, ``channels`` for feature-map
attention) and, for sequence models, whether it is causal and how long its sequences are. The
rest of a mechanism's constructor arguments come from its card's ``bench`` configuration (the
realistic one), so that a mechanism plugs into a backbone by name alone::

    mixer = build_mechanism("mhsa", 64, family="token_mixer", causal=True)

``overrides`` replace card values (e.g. ``{"num_heads": 2}``) when the card's configuration does
not fit the width; a mechanism that still cannot be built raises a :class:`ValueError` that names
the mechanism, the width and the arguments tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

import attnzoo

__all__ = ["WIDTH_KEYS", "build_mechanism", "mechanism_kwargs"]

WIDTH_KEYS: tuple[str, ...] = ("dim", "channels")
"""Constructor keys that carry the backbone width."""

_LENGTH_KEYS: tuple[str, ...] = ("seq_len",)


def mechanism_kwargs(
    name: str,
    width: int,
    *,
    family: str | tuple[str, ...] | None = None,
    spatial_dims: int | tuple[int, ...] | None = None,
    causal: bool | None = None,
    seq_len: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Constructor kwargs for mechanism ``name`` at ``width``.

    Args:
        name: registered name or alias.
        width: the backbone width; replaces the card's ``dim``/``channels``.
        family: family (or families) the backbone accepts.
        spatial_dims: spatial dims (or a tuple of them) the backbone feeds.
        causal: for sequence mixers: ``True`` requires a causal variant and switches it on,
            ``False`` switches it off; ``None`` keeps the card's value.
        seq_len: replaces a fixed-length key (``seq_len``) of the card, if there is one.
        overrides: kwargs that replace the card's values last.

    Raises:
        ValueError: the mechanism is of another family or layout, or has no causal variant.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ValueError(f"width must be a positive int, got {width!r}")
    c = attnzoo.card(name)
    families = (family,) if isinstance(family, str) else family
    if families is not None and c.family not in families:
        raise ValueError(
            f"mechanism {c.name!r} is a {c.family}; this backbone takes {' or '.join(families)} "
            f"(see attnzoo.list_mechanisms(family=...))"
        )
    dims = (spatial_dims,) if isinstance(spatial_dims, int) else spatial_dims
    if dims is not None and c.spatial_dims not in dims:
        raise ValueError(
            f"mechanism {c.name!r} works on {c.spatial_dims}-D inputs; this backbone feeds "
            f"{' or '.join(str(d) for d in dims)}-D inputs"
        )
    kwargs = dict(c.bench or c.tiny)
    replaced = False
    for key in WIDTH_KEYS:
        if key in kwargs:
            kwargs[key] = width
            replaced = True
    if not replaced:
        raise ValueError(
            f"mechanism {c.name!r}: its card's config has none of {WIDTH_KEYS}, so attnzoo cannot "
            f"set its width; pass the width key in overrides"
        )
    if causal is True and not c.causal:
        raise ValueError(f"mechanism {c.name!r} has no causal variant, so it cannot mix a causal sequence")
    if c.causal and causal is not None:
        kwargs["causal"] = causal
    elif not c.causal:
        kwargs.pop("causal", None)
    if seq_len is not None:
        for key in _LENGTH_KEYS:
            if key in kwargs:
                kwargs[key] = seq_len
    kwargs.update(overrides or {})
    return kwargs


def build_mechanism(
    name: str,
    width: int,
    *,
    family: str | tuple[str, ...] | None = None,
    spatial_dims: int | tuple[int, ...] | None = None,
    causal: bool | None = None,
    seq_len: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build mechanism ``name`` at ``width`` (see :func:`mechanism_kwargs` for the arguments).

    Raises:
        ValueError: the mechanism does not fit the backbone, or its constructor rejected the
            kwargs at this width (the message names both).
    """
    kwargs = mechanism_kwargs(
        name,
        width,
        family=family,
        spatial_dims=spatial_dims,
        causal=causal,
        seq_len=seq_len,
        overrides=overrides,
    )
    try:
        return attnzoo.create(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"cannot build mechanism {attnzoo.card(name).name!r} at width {width} with {kwargs}: {exc}. "
            f"Pass overrides (CLI: --mechanism-kwargs '{name}:{{...}}') to change its arguments."
        ) from exc
