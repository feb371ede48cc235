"""Converters from the authors' official checkpoints, and the parity harness that uses them.

``load(name, constructor, state_dict, symbol=None)`` builds the attnzoo module equivalent to the
official class ``name`` (a fixture folder name under ``shared/parity``, one per official code
format) built with ``constructor`` kwargs, converts and loads the official ``state_dict``, and
returns a callable that takes the official forward's inputs by name plus its forward kwargs and
returns the official outputs as a tuple, in the official order::

    run = attnzoo.official.load("eca", {"channel": 64, "k_size": 5}, official_state_dict)
    (out,) = run(x=x)
    run.module  # the attnzoo module, usable on its own

Adapters live one per file in this package and register with :func:`adapter`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["OfficialRun", "adapter", "available", "load", "load_converted"]

AdapterFn = Callable[[Mapping[str, Any], Mapping[str, torch.Tensor], "str | None"], "OfficialRun"]
_ADAPTERS: dict[str, AdapterFn] = {}
_DISCOVERED = False


@dataclass
class OfficialRun:
    """An attnzoo module loaded from an official checkpoint, called the official way.

    Attributes:
        module: the attnzoo module (with converted weights).
        call: ``call(module, **inputs_and_forward_kwargs) -> tuple of tensors`` in the official
            output order.
    """

    module: nn.Module
    call: Callable[..., tuple[torch.Tensor, ...]]

    def __call__(self, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return self.call(self.module, **kwargs)


def adapter(name: str) -> Callable[[AdapterFn], AdapterFn]:
    """Register ``fn(constructor, state_dict, symbol) -> OfficialRun`` for fixture ``name``."""

    def decorator(fn: AdapterFn) -> AdapterFn:
        if name in _ADAPTERS:
            raise ValueError(f"official adapter {name!r} is already registered")
        _ADAPTERS[name] = fn
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


def load(
    name: str,
    constructor: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    symbol: str | None = None,
) -> OfficialRun:
    """Build the attnzoo equivalent of official ``name`` and load its ``state_dict``.

    Args:
        name: official format, one of :func:`available`.
        constructor: the official constructor's kwargs.
        state_dict: the official module's ``state_dict()`` (buffers included).
        symbol: the official class when one format covers several.
    """
    _discover()
    if name not in _ADAPTERS:
        raise KeyError(f"no official adapter for {name!r}; available: {', '.join(available())}")
    return _ADAPTERS[name](constructor, state_dict, symbol)


def load_converted(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """``load_state_dict(strict=True)`` with an error that lists missing and unexpected keys."""
    result = module.load_state_dict(dict(state_dict), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint does not fit {type(module).__name__}: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    return module
