"""Official constructor signatures, and the one error :mod:`attnzoo.official` raises for bad input.

A :class:`Signature` writes an official constructor down as keyword arguments, ``name=kind``
(required) or ``name=(kind, default)``. A kind is ``int``, ``float`` (ints accepted), ``bool``,
``str``, ``list`` (list or tuple), ``dict`` (any mapping), ``type`` (a class), ``None``, a union
such as ``int | None``, a :class:`Choice` of the values attnzoo implements, or a nested
:class:`Signature` (a config mapping or attribute namespace). :meth:`Signature.check` returns the
complete keyword arguments (defaults filled) and every problem found, never only the first.
"""

from __future__ import annotations

import copy
import difflib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

__all__ = ["REQUIRED", "CheckpointError", "Choice", "Problem", "Signature"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an official constructor or checkpoint.

    Attributes:
        kind: ``unknown_argument``, ``unsupported_argument``, ``missing_argument``, ``argument``
            (a value of the wrong type, or one attnzoo does not implement), ``symbol``,
            ``missing_key``, ``unexpected_key``, ``shape``, ``not_a_tensor``, ``dtype`` or
            ``non_finite``.
        key: the offending constructor argument (dotted inside nested configs) or state-dict key.
        message: the problem in words, naming ``key``.
    """

    kind: str
    key: str
    message: str

    def __str__(self) -> str:
        return self.message


class CheckpointError(ValueError):
    """Every problem of one :func:`attnzoo.official.load` call, in one error.

    Attributes:
        problems: the :class:`Problem` list, in the order found (constructor first).
        keys: the offending argument names and state-dict keys.
    """

    def __init__(self, problems: Sequence[Problem], title: str = "official checkpoint rejected") -> None:
        self.problems = tuple(problems)
        self.title = title
        count = len(self.problems)
        lines = "\n".join(f"  - {p.message}" for p in self.problems)
        super().__init__(f"{title}: {count} problem{'s' if count != 1 else ''}\n{lines}")

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.problems]

    @classmethod
    def argument(cls, key: str, message: str) -> CheckpointError:
        """An error with one ``argument`` problem: a value or combination attnzoo does not implement."""
        return cls([Problem("argument", key, message)])


class Choice:
    """A kind that accepts only ``values`` (compared by value and type, so ``1`` is not ``True``)."""

    def __init__(self, *values: Any) -> None:
        self.values = values

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def __repr__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


_NAMES = {
    int: "an int",
    float: "a number",
    bool: "a bool",
    str: "a str",
    list: "a list",
    dict: "a mapping",
    type: "a class",
    type(None): "None",
}


def _describe(kind: Any) -> str:
    if isinstance(kind, types.UnionType):
        return " or ".join(_describe(k) for k in get_args(kind))
    if isinstance(kind, (Choice, Signature)):
        return repr(kind)
    return _NAMES.get(kind, f"a {getattr(kind, '__name__', kind)}")


def _accepts(kind: Any, value: Any) -> bool:
    if isinstance(kind, types.UnionType):
        return any(_accepts(k, value) for k in get_args(kind))
    if isinstance(kind, Choice):
        return kind.accepts(value)
    if kind is None or kind is type(None):
        return value is None
    if kind in (int, float):
        ok = (int,) if kind is int else (int, float)
        return isinstance(value, ok) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple))
    if kind is dict:
        return isinstance(value, Mapping)
    return isinstance(value, kind)


def _is_float(kind: Any) -> bool:
    return kind is float or (isinstance(kind, types.UnionType) and float in get_args(kind))


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    if hasattr(value, "__dict__") and not isinstance(value, type):  # an attribute namespace (CfgNode)
        return vars(value)
    return None


class Signature:
    """An official constructor (or config section): ``Signature(dim=int, num_heads=(int, 8))``.

    Args:
        open: accept (and drop) arguments not listed, for a whole-repository config of which the
            constructor reads only some fields.
        unsupported: official arguments attnzoo does not accept at all (a clearer message than an
            unknown argument).
        **args: ``name=kind`` for a required argument, ``name=(kind, default)`` otherwise.
    """

    def __init__(self, *, open: bool = False, unsupported: Sequence[str] = (), **args: Any) -> None:
        self.open = open
        self.unsupported = tuple(unsupported)
        self.args: dict[str, tuple[Any, Any]] = {
            name: spec if isinstance(spec, tuple) else (spec, REQUIRED) for name, spec in args.items()
        }

    def __repr__(self) -> str:
        return "a config with " + ", ".join(self.args)

    def required(self) -> list[str]:
        """Names of the required arguments."""
        return [name for name, (_, default) in self.args.items() if default is REQUIRED]

    def check(self, constructor: Any, owner: str, path: str = "") -> tuple[dict[str, Any], list[Problem]]:
        """``(complete kwargs, problems)`` for the official ``owner``'s ``constructor``."""
        values = _as_mapping(constructor)
        if values is None:
            where = path.rstrip(".") or "constructor"
            message = f"{where} must be a mapping, got {type(constructor).__name__}"
            return {}, [Problem("argument", where, message)]
        problems = [] if self.open else self._unknown(values, owner, path)
        filled: dict[str, Any] = {}
        for key, (kind, default) in self.args.items():
            name = f"{path}{key}"
            if key not in values and default is REQUIRED:
                message = f"missing argument {name!r}, required by the official {owner}"
                problems.append(Problem("missing_argument", name, message))
                continue
            value = values[key] if key in values else copy.deepcopy(default)
            if isinstance(kind, Signature):
                filled[key], nested = kind.check(value, owner, f"{name}.")
                problems += nested
            elif key not in values:
                filled[key] = value
            elif _accepts(kind, value):
                is_number = isinstance(value, int) and not isinstance(value, bool)
                filled[key] = float(value) if _is_float(kind) and is_number else value
            else:
                supported = " (the values attnzoo implements)" if isinstance(kind, Choice) else ""
                message = f"argument {name}={value!r} must be {_describe(kind)}{supported}"
                problems.append(Problem("argument", name, message))
        return filled, problems

    def _unknown(self, values: Mapping[str, Any], owner: str, path: str) -> list[Problem]:
        problems = []
        for key in values:
            if key in self.args:
                continue
            name = f"{path}{key}"
            if key in self.unsupported:
                message = f"argument {name!r} of the official {owner} is not supported by attnzoo"
                problems.append(Problem("unsupported_argument", name, message))
                continue
            close = difflib.get_close_matches(str(key), list(self.args), n=1)
            hint = f" (did you mean {path + close[0]!r}?)" if close else ""
            message = f"unknown argument {name!r}: not an argument of the official {owner}{hint}"
            problems.append(Problem("unknown_argument", name, message))
        return problems
