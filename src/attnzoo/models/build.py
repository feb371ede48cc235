"""Build any registered mechanism at a backbone's width from its card.

A backbone knows its width (``dim`` for token mixers and pooling, ``channels`` for feature-map
attention) and, for sequence and image models, whether it is causal and the size of what its
mixers see. The rest of a mechanism's constructor arguments come from its card's ``bench``
configuration (the realistic one, without the benchmark's reserved keys), so that a mechanism plugs
into a backbone by name alone::

    mixer = build_mechanism("mhsa", 64, family="token_mixer", causal=True)

The card's configuration is fitted to the backbone by fixed rules, applied only where a card value
does not fit (so a configuration that fits is used unchanged):

- the width replaces ``dim``/``channels``;
- ``num_heads`` that does not divide the width becomes the largest head count below it that does
  (e.g. 6 heads at width 32 become 4);
- with the backbone's spatial ``size`` known, a local extent larger than the input shrinks to it:
  ``kernel_size`` (times ``dilation``) to the smallest side, keeping the card value's parity (an odd
  neighbourhood stays centred), and ``window_size`` to the smallest side (one window then covers the
  input).

``overrides`` replace the fitted values last. A mechanism that a backbone cannot host by its card's
facts is refused by :func:`refusal` before anything is built (another family, another number of
spatial axes, no causal variant for a causal model, causal only for a bidirectional one, or a
forward input beyond the family contract that no backbone feeds); one whose constructor still
rejects the arguments raises a :class:`ValueError` naming the mechanism, the width and the
arguments tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

import attnzoo
from attnzoo.bench.measure import bench_kwargs

__all__ = ["WIDTH_KEYS", "build_mechanism", "mechanism_kwargs", "refusal"]

WIDTH_KEYS: tuple[str, ...] = ("dim", "channels")
"""Constructor keys that carry the backbone width."""

_LENGTH_KEYS: tuple[str, ...] = ("seq_len",)


def _as_tuple(value: Any) -> tuple[Any, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, (str, int)) else tuple(value)


def refusal(
    name: str,
    *,
    family: str | tuple[str, ...] | None = None,
    spatial_dims: int | tuple[int, ...] | None = None,
    causal: bool | None = None,
) -> str | None:
    """Why a backbone cannot host mechanism ``name``, from the card's facts, or ``None`` if it can.

    Args:
        name: registered name or alias.
        family: family (or families) the backbone accepts; ``None`` accepts any.
        spatial_dims: spatial dims (or a tuple of them) the backbone feeds; ``None`` accepts any.
        causal: ``True`` for a causal model (needs ``card.causal``), ``False`` for a bidirectional
            one (refuses ``card.causal_only``), ``None`` for neither.

    Backbones feed a mechanism its family contract only, so a card with ``extra_inputs`` is refused.
    """
    c = attnzoo.card(name)
    families = _as_tuple(family)
    if families is not None and c.family not in families:
        return (
            f"mechanism {c.name!r} is a {c.family}; this backbone takes {' or '.join(families)} "
            f"(see attnzoo.list_mechanisms(family=...))"
        )
    dims = _as_tuple(spatial_dims)
    if dims is not None and c.spatial_dims not in dims:
        return (
            f"mechanism {c.name!r} works on {c.spatial_dims}-D inputs; this backbone feeds "
            f"{' or '.join(str(d) for d in dims)}-D inputs"
        )
    if causal is True and not c.causal:
        return (
            f"mechanism {c.name!r} has no causal variant (card causal=False), so it cannot mix a causal "
            f"sequence"
        )
    if causal is False and c.causal_only:
        return (
            f"mechanism {c.name!r} is causal only (card causal_only=True), so it cannot mix the tokens of "
            f"a bidirectional model, where every token reads every other"
        )
    if c.extra_inputs:
        return (
            f"mechanism {c.name!r} needs the forward input(s) {', '.join(c.extra_inputs)} (card "
            f"extra_inputs) beyond its family contract, which this backbone does not feed"
        )
    return None


def _fit_heads(kwargs: dict[str, Any], width: int) -> None:
    heads = kwargs.get("num_heads")
    if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 and width % heads:
        kwargs["num_heads"] = max(h for h in range(1, heads) if width % h == 0)


def _plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _fit_extents(kwargs: dict[str, Any], size: tuple[int, ...]) -> None:
    side = min(size)
    kernel, dilation = kwargs.get("kernel_size"), kwargs.get("dilation", 1)
    if _plain_int(kernel) and _plain_int(dilation) and kernel * dilation > side:
        limit = max(1, side // dilation)
        kwargs["kernel_size"] = max(1, limit - (limit - kernel) % 2)
    window = kwargs.get("window_size")
    if _plain_int(window) and window > side:
        kwargs["window_size"] = side


def mechanism_kwargs(
    name: str,
    width: int,
    *,
    family: str | tuple[str, ...] | None = None,
    spatial_dims: int | tuple[int, ...] | None = None,
    causal: bool | None = None,
    seq_len: int | None = None,
    size: tuple[int, ...] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Constructor kwargs for mechanism ``name`` at ``width``, fitted as the module docstring says.

    Args:
        name: registered name or alias.
        width: the backbone width; replaces the card's ``dim``/``channels``.
        family, spatial_dims, causal: what the backbone hosts (see :func:`refusal`); ``causal``
            also switches a sequence mixer's variant (``None`` keeps the card's value).
        seq_len: replaces a fixed-length key (``seq_len``) of the card, if there is one.
        size: the spatial size the mechanism will see (``(N,)`` or ``(H, W)``), to fit local
            extents; ``None`` when the backbone does not know it.
        overrides: kwargs that replace the fitted values last.

    Raises:
        ValueError: :func:`refusal` refuses the mechanism, or its card has no width key.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ValueError(f"width must be a positive int, got {width!r}")
    if size is not None and (not size or not all(_plain_int(s) for s in size)):
        raise ValueError(f"size must be a tuple of positive ints, got {size!r}")
    reason = refusal(name, family=family, spatial_dims=spatial_dims, causal=causal)
    if reason is not None:
        raise ValueError(reason)
    c = attnzoo.card(name)
    kwargs = bench_kwargs(c.name) if c.bench else dict(c.tiny)
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
    if c.causal and causal is not None:
        kwargs["causal"] = causal
    elif not c.causal:
        kwargs.pop("causal", None)
    if seq_len is not None:
        for key in _LENGTH_KEYS:
            if key in kwargs:
                kwargs[key] = seq_len
    _fit_heads(kwargs, width)
    if size is not None:
        _fit_extents(kwargs, tuple(size))
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
    size: tuple[int, ...] | None = None,
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
        size=size,
        overrides=overrides,
    )
    try:
        return attnzoo.create(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"cannot build mechanism {attnzoo.card(name).name!r} at width {width} with {kwargs}: {exc}. "
            f"Pass overrides (CLI: --mechanism-kwargs '{name}:{{...}}') to change its arguments."
        ) from exc
