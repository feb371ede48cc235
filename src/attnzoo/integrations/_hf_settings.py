"""Settings of attnzoo's ``transformers`` attention implementations, and mechanism-name resolution.

Every implementation ``attnzoo_<name>`` has one frozen settings dataclass, validated on
construction: a wrong type raises ``TypeError`` and a wrong value :class:`IntegrationError`, both
naming the setting. :func:`resolve` turns a mechanism name (an attnzoo name or alias, with or
without the ``attnzoo_`` prefix) into a supported mechanism, or says why it is not one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from types import MappingProxyType
from typing import Any

from attnzoo.inference.var import LLAMA2_7B_SINK_DIMS
from attnzoo.integrations import IntegrationError
from attnzoo.integrations._hf_names import INFERENCE_METHODS, MECHANISMS, PREFIX, TOKEN_MIXERS
from attnzoo.registry import Card, UnknownMechanismError, card

__all__ = [
    "SETTINGS",
    "ACTSettings",
    "NeighborhoodSettings",
    "PINESettings",
    "RecycledSettings",
    "S2Settings",
    "SlidingWindowSettings",
    "SoftmaxSettings",
    "VARSettings",
    "make_settings",
    "resolve",
    "unfit_reason",
]


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise IntegrationError(f"{name} must be >= {minimum}, got {value}")
    return value


def _ints(value: Any, name: str, minimum: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(value).__name__}")
    return tuple(_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(value))


def _number(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise IntegrationError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class SoftmaxSettings:
    """``attnzoo_mhsa``: softmax attention under the model's own mask; nothing to set."""


@dataclass(frozen=True)
class SlidingWindowSettings:
    """``attnzoo_sliding_window``.

    Attributes:
        window: keys visible on each side of a query, self excluded (past side only in a causal
            model); ``None`` takes the model's own ``sliding_window - 1`` (Mistral, Qwen2).
    """

    window: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None:
            _int(self.window, "window", 0)


@dataclass(frozen=True)
class NeighborhoodSettings:
    """``attnzoo_neighborhood_attention_1d``: NATTEN's 1-D neighbourhood of ``kernel_size`` keys,
    every ``dilation``-th position."""

    kernel_size: int
    dilation: int = 1

    def __post_init__(self) -> None:
        _int(self.kernel_size, "kernel_size", 1)
        _int(self.dilation, "dilation", 1)


@dataclass(frozen=True)
class S2Settings:
    """``attnzoo_s2_attention``: groups of ``group_size`` tokens (half of the heads shifted by
    ``group_size // 2``) plus ``num_sink`` leading sink tokens."""

    group_size: int
    num_sink: int = 4

    def __post_init__(self) -> None:
        _int(self.group_size, "group_size", 2)
        _int(self.num_sink, "num_sink", 0)


@dataclass(frozen=True)
class ACTSettings:
    """``attnzoo_act``: :func:`attnzoo.inference.act.calibrate` on ``heads[layer]`` of each listed layer."""

    heads: Mapping[int, tuple[int, ...]]
    beta: float = 0.4
    threshold: float = 0.1
    official_quirks: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.heads, Mapping):
            raise TypeError(
                f"heads must be a mapping {{layer: head indices}}, got {type(self.heads).__name__}"
            )
        heads = {_int(k, "heads (layer)", 0): _ints(v, f"heads[{k}]", 0) for k, v in self.heads.items()}
        _set(self, "heads", MappingProxyType(heads))
        _set(self, "beta", _number(self.beta, "beta", 0.0, 1.0))
        _set(self, "threshold", _number(self.threshold, "threshold"))
        if not isinstance(self.official_quirks, bool):
            raise TypeError(f"official_quirks must be a bool, got {type(self.official_quirks).__name__}")


@dataclass(frozen=True)
class VARSettings:
    """``attnzoo_var``: :class:`attnzoo.inference.var.VisualAttentionRedistribution` on the image
    tokens ``[image_start, image_start + image_len)`` in ``layers`` (default ``2..L-1``)."""

    image_start: int
    image_len: int
    dim_sink: tuple[int, ...] = LLAMA2_7B_SINK_DIMS
    tau: float = 20.0
    rho: float = 0.5
    summ: float = 0.2
    p: float = 0.6
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _int(self.image_start, "image_start", 0)
        _int(self.image_len, "image_len", 1)
        dims = _ints(self.dim_sink, "dim_sink", 0)
        if not dims:
            raise IntegrationError("dim_sink must name at least one hidden dimension")
        _set(self, "dim_sink", dims)
        _set(self, "tau", _number(self.tau, "tau"))
        _set(self, "rho", _number(self.rho, "rho"))
        _set(self, "summ", _number(self.summ, "summ"))
        _set(self, "p", _number(self.p, "p", 0.0, 1.0))
        if self.layers is not None:
            _set(self, "layers", _ints(self.layers, "layers", 0))


@dataclass(frozen=True)
class PINESettings:
    """``attnzoo_pine``: :func:`attnzoo.inference.pine.pine_attention` over the prompt layout
    ``[prefix][documents...][suffix]``."""

    prefix: int
    documents: tuple[int, ...]

    def __post_init__(self) -> None:
        _int(self.prefix, "prefix", 0)
        _set(self, "documents", _ints(self.documents, "documents", 1))


@dataclass(frozen=True)
class RecycledSettings:
    """``attnzoo_recycled``: :class:`attnzoo.inference.recycled.RecycledAttention` in every layer."""

    stride: int
    top_k: int

    def __post_init__(self) -> None:
        _int(self.stride, "stride", 1)
        _int(self.top_k, "top_k", 1)


SETTINGS: dict[str, type] = {
    "mhsa": SoftmaxSettings,
    "sliding_window": SlidingWindowSettings,
    "neighborhood_attention_1d": NeighborhoodSettings,
    "s2_attention": S2Settings,
    "act": ACTSettings,
    "var": VARSettings,
    "pine": PINESettings,
    "recycled": RecycledSettings,
}


def make_settings(mechanism: str, values: Mapping[str, Any]) -> Any:
    """The validated settings of ``mechanism`` from keyword ``values``."""
    cls = SETTINGS[mechanism]
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise IntegrationError(
            f"{mechanism}: unknown setting(s) {', '.join(unknown)}; accepted: {', '.join(names) or 'none'}"
        )
    missing = [
        f.name
        for f in fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in values
    ]
    if missing:
        raise IntegrationError(f"{mechanism}: missing setting(s) {', '.join(missing)}")
    return cls(**values)


_FAMILY_CONTRACTS = {
    "cross_attention": "queries reading from a separate context",
    "feature_map": "a (B, C, *S) feature map in, the same out",
    "gate": "a feature map gated by a second signal",
    "pooling": "a set of instances pooled to one vector",
}

_UNFIT = {
    "linear_attention": "it replaces softmax(q k^T) by its own feature map phi(q) phi(k)^T (phi = elu + 1), "
    "which the q/k/v of a softmax-pretrained model were not trained for",
    "based": "it replaces softmax by a Taylor feature map of its own feature_dim projections of q/k, "
    "plus a window branch",
    "gla": "its forget gates, RMSNorm and output gate are computed from the hidden states, which an "
    "attention function (given only q/k/v) never sees; and it has no softmax",
    "lightning_attention": "it is causal linear attention with per-head decay and no softmax, which the "
    "q/k/v of a softmax-pretrained model were not trained for",
    "gaam": "it reweights the hidden states by learned Gaussians and has no q/k/v",
    "moh_attention": "its router scores the hidden states, which an attention function (given only "
    "q/k/v) never sees, to choose and weight heads",
    "ninformer_gating": "it gates the hidden states by an MLP-Mixer block and has no q/k/v attention",
    "reversed_attention": "it normalises attention over the queries (children to parents) and gates heads "
    "from the hidden states, unlike the softmax over keys the pretrained heads compute",
}


def unfit_reason(mechanism: Card) -> str:
    """Why registered mechanism ``mechanism`` has no attention function for ``transformers``."""
    if mechanism.family != "token_mixer":
        contract = _FAMILY_CONTRACTS.get(mechanism.family, mechanism.family)
        return f"it is a {mechanism.family} mechanism ({contract}), not attention over a sequence's q/k/v"
    if mechanism.spatial_dims >= 2:
        return (
            "it is a 2-D mixer: it needs the (H, W) grid of its tokens and parameters of its own, while a "
            "transformers attention function receives flat q/k/v sequences without the grid"
        )
    return _UNFIT.get(
        mechanism.name, "its math is not softmax attention over the q/k/v of a pretrained model"
    )


def _supported_names() -> list[str]:
    names = list(MECHANISMS)
    for name in TOKEN_MIXERS:
        names.extend(card(name).aliases)
    return names


def resolve(name: str) -> str:
    """The supported mechanism ``name`` refers to (an attnzoo name or alias, or ``attnzoo_<name>``).

    Raises:
        TypeError: ``name`` is not a str.
        IntegrationError: ``name`` is unknown (the message lists the closest supported names) or
            names a mechanism whose math does not fit a pretrained model's q/k/v (it says why).
    """
    if not isinstance(name, str):
        raise TypeError(f"mechanism must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "_").removeprefix(PREFIX)
    if key in INFERENCE_METHODS:
        return key
    try:
        found = card(key)
    except UnknownMechanismError:
        close = difflib.get_close_matches(key, _supported_names(), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise IntegrationError(
            f"unknown mechanism {name!r}{hint}. transformers implementations: "
            f"{', '.join(PREFIX + m for m in MECHANISMS)}"
        ) from None
    if found.name in TOKEN_MIXERS:
        return found.name
    raise IntegrationError(
        f"{found.name!r} has no transformers attention function: {unfit_reason(found)}. "
        f"Supported: {', '.join(MECHANISMS)}"
    )
