"""Constructor arguments of every mechanism are validated at construction (issue 20, part 1).

Cases are generated from the registry: every keyword of a mechanism's constructor annotated ``int``
(also ``int | None`` and ``int | tuple``), ``bool`` or ``float`` (dropout-like rates in particular)
is given a wrong type and an out-of-range value on top of the card's ``tiny`` kwargs. Wrong type ->
``TypeError``, wrong value -> ``ValueError``, and the message names the argument.
"""

from __future__ import annotations

import pytest
from tests.helpers import ALLOWED_ZERO, constructor_arguments

import attnzoo

ARGUMENTS = constructor_arguments()


def _of_kind(kind: str) -> pytest.MarkDecorator:
    """Parametrize a test over the ``(name, arg)`` of every argument of ``kind``."""
    chosen = [(n, a) for n, a, k, _ in ARGUMENTS if k == kind]
    return pytest.mark.parametrize(("name", "arg"), chosen, ids=[f"{n}-{a}" for n, a in chosen])


def _build(name: str, **override: object) -> None:
    kwargs = {**attnzoo.card(name).tiny, **override}
    attnzoo.registry.mechanism_class(name)(**kwargs)


def _raises(exc: type[Exception] | tuple[type[Exception], ...], name: str, arg: str, value: object) -> None:
    with pytest.raises(exc) as info:
        _build(name, **{arg: value})
    assert arg in str(info.value), f"{name}: message for {arg}={value!r} does not name it: {info.value}"


def test_arguments_were_discovered() -> None:
    kinds = {kind for _, _, kind, _ in ARGUMENTS}
    assert kinds == {"int", "bool", "rate", "float"}
    mechanisms = {name for name, _, _, _ in ARGUMENTS}
    assert mechanisms == set(attnzoo.list_mechanisms())


def test_every_tiny_int_is_an_int_argument() -> None:
    checked = {(name, arg) for name, arg, kind, _ in ARGUMENTS if kind == "int"}
    for name in attnzoo.list_mechanisms():
        for key, value in attnzoo.card(name).tiny.items():
            if isinstance(value, int) and not isinstance(value, bool):
                assert (name, key) in checked, f"{name}.{key} is an int in the card but not annotated int"


def test_allowed_zero_entries_exist() -> None:
    checked = {(name, arg) for name, arg, kind, _ in ARGUMENTS if kind == "int"}
    assert set(ALLOWED_ZERO) <= checked


@pytest.mark.parametrize(
    ("name", "arg", "tokens"),
    [(n, a, t) for n, a, k, t in ARGUMENTS if k == "int"],
    ids=[f"{n}-{a}" for n, a, k, _ in ARGUMENTS if k == "int"],
)
def test_int_argument(name: str, arg: str, tokens: set[str]) -> None:
    _raises((TypeError, ValueError) if "str" in tokens else TypeError, name, arg, "8")
    _raises(TypeError, name, arg, 2.0)
    _raises(TypeError, name, arg, True)
    _raises(ValueError, name, arg, -1)
    if (name, arg) in ALLOWED_ZERO:
        _build(name, **{arg: 0})
    else:
        _raises(ValueError, name, arg, 0)


@_of_kind("bool")
def test_bool_argument(name: str, arg: str) -> None:
    _raises(TypeError, name, arg, 1)
    _raises(TypeError, name, arg, "yes")


@_of_kind("rate")
def test_rate_argument(name: str, arg: str) -> None:
    _raises(ValueError, name, arg, 1.0)
    _raises(ValueError, name, arg, -0.1)
    _raises(TypeError, name, arg, "0.1")
    _raises(TypeError, name, arg, False)
    _build(name, **{arg: 0.5})


@_of_kind("float")
def test_float_argument(name: str, arg: str) -> None:
    _raises(TypeError, name, arg, "1.0")
    _raises(TypeError, name, arg, True)
    _raises(ValueError, name, arg, float("nan"))
