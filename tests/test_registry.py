"""Registry and cards: create by name, aliases, unknown names, user registration, card validation."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

import attnzoo
from attnzoo.registry import FAMILIES, Card, UnknownMechanismError, register


def test_builtin_mechanisms_are_registered() -> None:
    names = attnzoo.list_mechanisms()
    assert {"mhsa", "se", "eca"} <= set(names)
    assert names == sorted(names)
    assert "eca" in attnzoo.list_mechanisms(family="feature_map")
    assert "eca" not in attnzoo.list_mechanisms(family="token_mixer")


def test_create_by_name_and_alias() -> None:
    m = attnzoo.create("mhsa", dim=8, num_heads=2)
    assert isinstance(m, attnzoo.TokenMixer)
    assert type(attnzoo.create("softmax", dim=8, num_heads=2)) is type(m)
    assert attnzoo.card("ECA-Net").name == "eca"


def test_unknown_name_lists_closest() -> None:
    with pytest.raises(UnknownMechanismError, match="closest: mhsa"):
        attnzoo.create("mhsaa")
    with pytest.raises(KeyError):
        attnzoo.card("definitely_not_here")


def test_unknown_family_is_an_error() -> None:
    with pytest.raises(ValueError, match="family"):
        attnzoo.list_mechanisms(family="nope")


def test_card_is_frozen_and_validated() -> None:
    c = attnzoo.card("eca")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.tiny["channels"] = 3  # type: ignore[index]
    with pytest.raises(ValueError, match="family"):
        Card(name="x", family="nope", paper="p")
    with pytest.raises(ValueError, match="parity_fixtures"):
        Card(name="x", family="gate", paper="p", parity="official")
    with pytest.raises(ValueError, match="lower case"):
        Card(name="Bad Name", family="gate", paper="p")


def test_card_pickles() -> None:
    c = attnzoo.card("eca")
    assert pickle.loads(pickle.dumps(c)) == c


def test_every_card_is_complete() -> None:
    for name in attnzoo.list_mechanisms():
        c = attnzoo.card(name)
        assert c.family in FAMILIES
        assert c.paper and c.summary and c.time_complexity and c.memory_complexity, name
        assert c.tiny and c.bench, f"{name}: tiny and bench configs are required"
        assert c.ledger, f"{name}: a card needs at least one ledger line"
        if c.parity == "official":
            assert c.official_repo and c.official_commit and c.parity_fixtures, name


def test_user_code_can_register() -> None:
    @register(
        Card(
            name="test_identity_mixer",
            family="token_mixer",
            paper="none",
            summary="identity",
            time_complexity="O(NC)",
            memory_complexity="O(NC)",
            ledger=("test only",),
            tiny={"dim": 4},
            bench={"dim": 4},
        )
    )
    class Identity(attnzoo.TokenMixer):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dim = dim

        def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
            return x

    try:
        m = attnzoo.create("test_identity_mixer", dim=4)
        assert torch.equal(m(torch.ones(1, 3, 4)), torch.ones(1, 3, 4))
        with pytest.raises(ValueError, match="already registered"):
            register(attnzoo.card("test_identity_mixer"))(Identity)
    finally:
        from attnzoo import registry

        registry._CARDS.pop("test_identity_mixer")
        registry._CLASSES.pop("test_identity_mixer")
        registry._ALIASES.pop("test_identity_mixer")
