"""Converters from the authors' official checkpoints, and the parity harness that uses them.

``load(name, constructor, state_dict, symbol=None, strict=True)`` builds the attnzoo module
equivalent to the official class ``name`` (a fixture folder name under ``shared/parity``, one per
official code format) built with ``constructor`` kwargs, converts and loads the official
``state_dict``, and returns a callable that takes the official forward's inputs by name plus its
forward kwargs and returns the official outputs as a tuple, in the official order::

    run = attnzoo.official.load("eca", {"channel": 64, "k_size": 5}, official_state_dict)
    (out,) = run(x=x)
    run.module  # the attnzoo module, usable on its own

Every adapter (one per file in this package, registered with :func:`adapter`) declares the
official constructor :class:`Signature` of each class it covers and builds a :class:`Conversion`:
the attnzoo module plus the key mapping in both directions. The official checkpoint layout (keys,
shapes, floating or integer) is derived from that module through ``to_official``, so every adapter
gets the same checks before torch sees the data: unknown, unsupported or missing constructor
arguments and values of the wrong type, missing and unexpected keys, wrong shapes, non-tensor
values, integer tensors where weights are floating, NaN/Inf weights. All problems of one call are
raised together as one :class:`CheckpointError`. With ``strict=False`` missing keys keep their
initialised values and unexpected keys are ignored; the run's :class:`LoadReport` names both and a
:class:`PartialLoadWarning` lists them. :func:`symbols` and :func:`signature` show what a format
accepts.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnzoo.checks import check_bool
from attnzoo.official.schema import REQUIRED, CheckpointError, Choice, Problem, Signature

__all__ = [
    "REQUIRED",
    "CheckpointError",
    "Choice",
    "Conversion",
    "LoadReport",
    "OfficialRun",
    "PartialLoadWarning",
    "Problem",
    "Signature",
    "adapter",
    "available",
    "load",
    "signature",
    "symbols",
]

StateDict = Mapping[str, torch.Tensor]


class PartialLoadWarning(UserWarning):
    """A ``strict=False`` load kept initialised values for missing keys or ignored unexpected keys."""


@dataclass(frozen=True)
class LoadReport:
    """What a ``strict=False`` load skipped (both empty after a strict load).

    Attributes:
        missing: official keys absent from the checkpoint; the module keeps its initialised values.
        ignored: checkpoint keys that are not in the official layout; not loaded.
    """

    missing: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.ignored)


@dataclass
class OfficialRun:
    """An attnzoo module loaded from an official checkpoint, called the official way.

    Attributes:
        module: the attnzoo module (with converted weights).
        call: ``call(module, **inputs_and_forward_kwargs) -> tuple of tensors`` in the official
            output order.
        report: what a ``strict=False`` load skipped.
    """

    module: nn.Module
    call: Callable[..., tuple[torch.Tensor, ...]]
    report: LoadReport = field(default_factory=LoadReport)

    def __call__(self, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return self.call(self.module, **kwargs)


@dataclass
class Conversion:
    """What an adapter builds from the validated official constructor kwargs.

    Attributes:
        module: the attnzoo module (initialised weights).
        call: as :attr:`OfficialRun.call`.
        to_attnzoo: official state_dict (every official key present) -> attnzoo state_dict.
        to_official: attnzoo state_dict -> official state_dict; it defines the official layout.
        optional: official keys a checkpoint may omit, with the values used then (``*num_batches_tracked``
            is always optional, as in torch's BatchNorm).
    """

    module: nn.Module
    call: Callable[..., tuple[torch.Tensor, ...]]
    to_attnzoo: Callable[[StateDict], dict[str, torch.Tensor]] = dict
    to_official: Callable[[StateDict], dict[str, torch.Tensor]] = dict
    optional: Mapping[str, torch.Tensor] = field(default_factory=dict)


Build = Callable[[dict[str, Any], str], Conversion]


@dataclass(frozen=True)
class _Adapter:
    signatures: Mapping[str, Signature]
    build: Build


_ADAPTERS: dict[str, _Adapter] = {}
_DISCOVERED = False


def adapter(name: str, signatures: Mapping[str, Signature]) -> Callable[[Build], Build]:
    """Register ``build(kwargs, symbol) -> Conversion`` for fixture ``name``.

    ``signatures`` maps each official class (symbol) the format covers to its constructor
    :class:`Signature`; the first one is the default symbol. ``build`` gets the complete checked
    kwargs; it raises :class:`CheckpointError` for combinations attnzoo does not implement.
    """
    if not signatures:
        raise ValueError(f"official adapter {name!r} needs at least one signature")

    def decorator(fn: Build) -> Build:
        if name in _ADAPTERS:
            raise ValueError(f"official adapter {name!r} is already registered")
        _ADAPTERS[name] = _Adapter(dict(signatures), fn)
        return fn

    return decorator


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in pkgutil.iter_modules(__path__, prefix=__name__ + "."):
        importlib.import_module(info.name)


def available() -> list[str]:
    """Official formats (fixture folder names) that :func:`load` can convert."""
    _discover()
    return sorted(_ADAPTERS)


def _get(name: str) -> _Adapter:
    _discover()
    if name not in _ADAPTERS:
        raise KeyError(f"no official adapter for {name!r}; available: {', '.join(available())}")
    return _ADAPTERS[name]


def symbols(name: str) -> list[str]:
    """The official classes format ``name`` covers, the default first."""
    return list(_get(name).signatures)


def signature(name: str, symbol: str | None = None) -> Signature:
    """The constructor :class:`Signature` of official ``symbol`` (default: the first) of ``name``."""
    sigs = _get(name).signatures
    return sigs[next(iter(sigs)) if symbol is None else symbol]


def _describe(value: Any) -> str:
    return f"a {type(value).__name__}"


def _value_problems(state_dict: Mapping[Any, Any], expected: StateDict | None) -> list[Problem]:
    """Non-tensor values, wrong shape or dtype kind, NaN/Inf (shape and dtype only with ``expected``)."""
    problems = []
    for key, value in state_dict.items():
        want = None if expected is None else expected.get(key)
        if expected is not None and want is None:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(Problem("not_a_tensor", key, f"{key!r} is {_describe(value)}, not a tensor"))
            continue
        if value.is_meta:
            problems.append(Problem("not_a_tensor", key, f"{key!r} is a meta tensor (it holds no values)"))
            continue
        if want is not None and tuple(value.shape) != tuple(want.shape):
            problems.append(
                Problem("shape", key, f"{key!r} has shape {tuple(value.shape)}, expected {tuple(want.shape)}")
            )
        if want is not None and value.is_floating_point() != want.is_floating_point():
            kind = "a floating-point" if want.is_floating_point() else "an integer"
            problems.append(Problem("dtype", key, f"{key!r} has dtype {value.dtype}, expected {kind} tensor"))
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            problems.append(Problem("non_finite", key, f"{key!r} holds {nan} NaN and {inf} Inf values"))
    return problems


def _layout_problems(
    expected: StateDict, optional: set[str], state_dict: Mapping[Any, Any], owner: str, strict: bool
) -> tuple[list[Problem], LoadReport]:
    problems = []
    ignored = tuple(str(k) for k in state_dict if k not in expected)
    missing = tuple(k for k in expected if k not in state_dict and k not in optional)
    if strict:
        for key in missing:
            want = expected[key]
            problems.append(
                Problem(
                    "missing_key",
                    key,
                    f"missing key {key!r} (shape {tuple(want.shape)}) of the official {owner}",
                )
            )
        for key in ignored:
            problems.append(
                Problem("unexpected_key", key, f"unexpected key {key!r}: not in the official {owner}")
            )
    problems += _value_problems(state_dict, expected)
    return problems, (LoadReport() if strict else LoadReport(missing, ignored))


def _dtype(state_dict: Mapping[Any, Any], expected: StateDict) -> torch.dtype | None:
    dtype = None
    for key, value in state_dict.items():
        if key in expected and isinstance(value, torch.Tensor) and value.is_floating_point():
            dtype = value.dtype if dtype is None else torch.promote_types(dtype, value.dtype)
    return dtype


def _conversion(
    entry: _Adapter, symbol: str, constructor: Any, state_dict: Mapping[Any, Any], title: str
) -> Conversion:
    """The adapter's :class:`Conversion`, or every constructor problem plus the value problems."""
    kwargs, problems = entry.signatures[symbol].check(constructor, symbol)
    if not problems:
        try:
            return entry.build(kwargs, symbol)
        except CheckpointError as err:
            problems = list(err.problems)
        except (ValueError, TypeError) as err:
            problems = [Problem("argument", "constructor", f"attnzoo cannot build the module: {err}")]
    problems += _value_problems(state_dict, None)
    raise CheckpointError(problems, f"{title} (keys and shapes are checked once the constructor is valid)")


def load(
    name: str,
    constructor: Mapping[str, Any],
    state_dict: StateDict,
    *,
    symbol: str | None = None,
    strict: bool = True,
) -> OfficialRun:
    """Build the attnzoo equivalent of official ``name`` and load its ``state_dict``.

    Args:
        name: official format, one of :func:`available`.
        constructor: the official constructor's kwargs.
        state_dict: the official module's ``state_dict()`` (buffers included).
        symbol: the official class when one format covers several (:func:`symbols`).
        strict: reject missing and unexpected keys; ``False`` keeps the initialised values of
            missing keys and ignores unexpected ones (both listed in ``run.report`` and warned).

    Raises:
        KeyError: ``name`` is not an official format.
        CheckpointError: with every problem of the constructor and the checkpoint.
    """
    entry = _get(name)
    check_bool(strict, "strict")
    symbol = next(iter(entry.signatures)) if symbol is None else symbol
    title = f"official {name} checkpoint ({symbol}) rejected"
    if symbol not in entry.signatures:
        raise CheckpointError(
            [Problem("symbol", "symbol", f"symbol {symbol!r} is not one of {list(entry.signatures)}")], title
        )
    if not isinstance(state_dict, Mapping):
        err = CheckpointError.argument(
            "state_dict", f"state_dict must be a mapping, got {_describe(state_dict)}"
        )
        raise CheckpointError(err.problems, title)
    conversion = _conversion(entry, symbol, constructor, state_dict, title)
    module = conversion.module
    expected = {**conversion.optional, **conversion.to_official(module.state_dict())}
    optional = set(conversion.optional) | {
        k for k in expected if k.rsplit(".", 1)[-1] == "num_batches_tracked"
    }
    problems, report = _layout_problems(expected, optional, state_dict, symbol, strict)
    if problems:
        hint = (
            "; strict=False loads a partial checkpoint"
            if all(p.kind in ("missing_key", "unexpected_key") for p in problems)
            else ""
        )
        raise CheckpointError(problems, title + hint)
    dtype = _dtype(state_dict, expected)
    if dtype is not None:
        module.to(dtype)
    complete = {
        k: state_dict[k] if k in state_dict else (v.to(dtype) if dtype and v.is_floating_point() else v)
        for k, v in expected.items()
    }
    module.load_state_dict(conversion.to_attnzoo(complete), strict=True)
    if report:
        warnings.warn(
            f"official {name} checkpoint loaded with strict=False: kept the initialised values of "
            f"{len(report.missing)} missing keys {list(report.missing)}, ignored {len(report.ignored)} "
            f"unexpected keys {list(report.ignored)}",
            PartialLoadWarning,
            stacklevel=2,
        )
    return OfficialRun(module.eval(), conversion.call, report)
