"""The mechanism registry: every mechanism is registered once, with its card.

A *card* is the mechanism's identity sheet: the paper, the official code, its cost as formulas,
the layouts and options it supports, how it is verified, and a ledger of every place where
attnzoo, the paper and the official code differ. Cards drive the conformance suite, the
benchmark harness and the README table, so registering a mechanism is all it takes to get them.

Usage::

    import attnzoo
    attn = attnzoo.create("mhsa", dim=64, num_heads=4)
    attnzoo.list_mechanisms(family="token_mixer")
    attnzoo.card("eca").ledger

User code registers its own mechanisms with the same decorator::

    @attnzoo.register(attnzoo.Card(name="my_attn", family="token_mixer", ...))
    class MyAttention(attnzoo.TokenMixer): ...
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from torch import nn

__all__ = [
    "FAMILIES",
    "KEY_PADDING",
    "PARITY_STATUSES",
    "Card",
    "UnknownMechanismError",
    "card",
    "create",
    "list_mechanisms",
    "mechanism_class",
    "register",
]

FAMILIES: tuple[str, ...] = ("token_mixer", "cross_attention", "feature_map", "gate", "pooling")
KEY_PADDING: tuple[str, ...] = ("any", "edges", "right", "none")
PARITY_STATUSES: tuple[str, ...] = ("official", "oracle", "equations")

ParityStatus = Literal["official", "oracle", "equations"]


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Card:
    """What attnzoo knows about a mechanism.

    Attributes:
        name: registry name (lower snake case).
        family: one of :data:`FAMILIES`; fixes the forward contract (see :mod:`attnzoo.families`).
        paper: paper title.
        arxiv: arXiv id, or ``None``.
        year: publication year.
        official_repo: ``owner/name`` of the authors' code, or ``None`` when there is none.
        official_commit: commit of the official code the parity fixtures were made from.
        parity: ``"official"`` (matches the authors' code through :mod:`attnzoo.official`),
            ``"oracle"`` (matches a well-known peer implementation) or ``"equations"`` (matches a
            float64 reference of the paper's equations only).
        parity_fixtures: fixture folder names under ``shared/parity`` that verify it.
        time_complexity / memory_complexity: formulas in N (tokens), C (channels), h (heads), etc.
        layouts: input layouts accepted (``"BNC"``, ``"BCHW"``, ``"BHWC"``, ...).
        spatial_dims: 1 for sequences, 2 for (H, W) grids, 3 for volumes, 0 for set-like inputs.
        causal: whether a causal variant exists (sequence mixers take ``causal=`` at construction).
        causal_only: whether the mechanism is causal only (``causal=False`` is refused), so it cannot
            mix the tokens of an image or of a bidirectional encoder.
        variable_size: whether one module accepts inputs of any size.
        extra_inputs: keyword inputs that ``forward`` requires beyond the family contract (e.g.
            ``region_map``), which :mod:`attnzoo.inputs` draws with the mechanism's
            ``example_kwargs``; a backbone that feeds only the contract cannot host the mechanism
            (:func:`attnzoo.models.build.refusal`).
        key_padding: which ``key_padding_mask (B, N)`` (True = keep) a 1-D token mixer honours, each
            kept run of tokens getting exactly its unpadded result: ``"any"`` (any pattern: the kept
            tokens, gathered, as one sequence), ``"edges"`` (one contiguous kept run per row: padding
            on the left and/or right), ``"right"`` (kept tokens first: right padding only, for
            mechanisms whose pattern is fixed to absolute positions) or ``"none"`` (refused).
        key_padding_note: why a ``"none"`` mechanism refuses masks (or what narrows its support); the
            refusal's error message quotes it.
        ledger: one line per deviation between attnzoo, the paper and the official code.
        tiny: constructor kwargs for a tiny instance (conformance suite, gradcheck).
        bench: constructor kwargs for the default benchmark configuration; reserved keys:
            ``sizes`` (the sizes to sweep instead of the preset's) and ``variants``
            (``{label: overrides}``, each benchmarked as ``name[label]``, e.g. dense vs sparse) and,
            for cross-attention, ``queries`` (query tokens; the sweep grows the context), and
            ``equal_width`` (overrides that make the card fit the family's shared width and head
            count in an equal-width benchmark, e.g. MoH's shared/routed head split of 4 heads), and
            ``cost_model`` (``"module:function"`` of a cost model the benchmark report prints beside
            each measured size, :func:`attnzoo.bench.measure.cost_model`).
        sweep: ranges of the random sweep (``tests/test_sweep.py``): constructor keyword -> tuple of
            choices, drawn independently on top of ``tiny`` (so every combination must build); reserved
            keys ``size`` (``(lo, hi)`` sizes of every spatial axis, or a list of explicit sizes),
            ``context_size`` (for cross-attention; same forms) and ``batch`` (``(lo, hi)``, default
            ``(1, 3)``).
        conformance: per-mechanism overrides for the conformance suite, e.g.
            ``{"sizes": [(4, 6)], "skip": {"compile": "reason"}}``; every skip carries its reason.
        aliases: other names :func:`create` accepts.
        summary: one line describing what it computes.
    """

    name: str
    family: str
    paper: str
    summary: str = ""
    arxiv: str | None = None
    year: int | None = None
    official_repo: str | None = None
    official_commit: str | None = None
    parity: ParityStatus = "equations"
    parity_fixtures: tuple[str, ...] = ()
    time_complexity: str = ""
    memory_complexity: str = ""
    layouts: tuple[str, ...] = ("BNC",)
    spatial_dims: int = 1
    causal: bool = False
    causal_only: bool = False
    variable_size: bool = True
    extra_inputs: tuple[str, ...] = ()
    key_padding: str = "none"
    key_padding_note: str = ""
    ledger: tuple[str, ...] = ()
    tiny: Mapping[str, Any] = field(default_factory=dict)
    bench: Mapping[str, Any] = field(default_factory=dict)
    sweep: Mapping[str, Any] = field(default_factory=dict)
    conformance: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or " " in self.name:
            raise ValueError(f"card name must be lower case without spaces, got {self.name!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"card {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.parity not in PARITY_STATUSES:
            raise ValueError(
                f"card {self.name!r}: parity must be one of {PARITY_STATUSES}, got {self.parity!r}"
            )
        if self.parity == "official" and not self.parity_fixtures:
            raise ValueError(f"card {self.name!r}: parity='official' needs parity_fixtures")
        if self.causal_only and not self.causal:
            raise ValueError(f"card {self.name!r}: causal_only=True needs causal=True")
        if self.spatial_dims not in (0, 1, 2, 3):
            raise ValueError(f"card {self.name!r}: spatial_dims must be 0, 1, 2 or 3")
        if self.key_padding not in KEY_PADDING:
            raise ValueError(f"card {self.name!r}: key_padding must be one of {KEY_PADDING}")
        if self.key_padding != "none" and (self.family != "token_mixer" or self.spatial_dims != 1):
            raise ValueError(f"card {self.name!r}: key_padding is for 1-D token mixers (spatial_dims=1)")
        for attr in ("tiny", "bench", "sweep", "conformance"):
            object.__setattr__(self, attr, _frozen(getattr(self, attr)))
        for attr in ("parity_fixtures", "layouts", "ledger", "aliases", "extra_inputs"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))

    def __reduce__(self) -> tuple[Any, ...]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for attr in ("tiny", "bench", "sweep", "conformance"):
            values[attr] = dict(values[attr])
        return (_card_from_dict, (values,))


def _card_from_dict(values: dict[str, Any]) -> Card:
    return Card(**values)


class UnknownMechanismError(KeyError):
    """Raised for a name that is not registered; the message lists the closest names."""

    def __str__(self) -> str:
        return str(self.args[0])


_ModuleT = TypeVar("_ModuleT", bound=type[nn.Module])

_CARDS: dict[str, Card] = {}
_CLASSES: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}
_DISCOVERED = False


def register(card_: Card) -> Callable[[_ModuleT], _ModuleT]:
    """Class decorator that registers ``cls`` under ``card_.name`` (and its aliases)."""

    def decorator(cls: _ModuleT) -> _ModuleT:
        taken = [n for n in (card_.name, *card_.aliases) if n in _ALIASES]
        if taken:
            raise ValueError(f"mechanism name(s) already registered: {taken}")
        _CARDS[card_.name] = card_
        _CLASSES[card_.name] = cls
        for n in (card_.name, *card_.aliases):
            _ALIASES[n] = card_.name
        cls.card = card_  # type: ignore[attr-defined]
        return cls

    return decorator


def _discover() -> None:
    """Import every module under :mod:`attnzoo.mechanisms` so that their decorators run."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module("attnzoo.mechanisms")
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        importlib.import_module(info.name)


def _resolve(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    _discover()
    key = name.lower().replace("-", "_")
    if key in _ALIASES:
        return _ALIASES[key]
    close = difflib.get_close_matches(key, list(_ALIASES), n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownMechanismError(f"unknown mechanism {name!r}{hint}. See attnzoo.list_mechanisms().")


def card(name: str) -> Card:
    """The card of mechanism ``name`` (or one of its aliases)."""
    return _CARDS[_resolve(name)]


def mechanism_class(name: str) -> Callable[..., nn.Module]:
    """The class registered under ``name``."""
    return _CLASSES[_resolve(name)]


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build mechanism ``name`` with constructor ``kwargs``."""
    return _CLASSES[_resolve(name)](**kwargs)


def list_mechanisms(family: str | None = None) -> list[str]:
    """Registered mechanism names, sorted, optionally only those of ``family``."""
    _discover()
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return sorted(n for n, c in _CARDS.items() if family is None or c.family == family)
