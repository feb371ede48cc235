"""Key mappings shared by the official adapters: prefix renames and per-key tensor views, both ways.

A :class:`KeyMap` turns an official state_dict into attnzoo's (``to_attnzoo``) and back
(``to_official``); keys it does not rename pass through unchanged. A view is a pair of functions
``(official -> attnzoo, attnzoo -> official)`` for one attnzoo key, e.g. :func:`singletons`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["KeyMap", "View", "singletons", "swap"]

View = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def singletons(*dims: int) -> View:
    """Official tensor with size-1 axes ``dims`` <-> attnzoo tensor without them."""
    order = sorted(dims)

    def drop(t: torch.Tensor) -> torch.Tensor:
        return t.reshape([s for i, s in enumerate(t.shape) if i not in order])

    def add(t: torch.Tensor) -> torch.Tensor:
        for d in order:
            t = t.unsqueeze(d)
        return t

    return drop, add


def swap(view: View) -> View:
    """The view with its directions exchanged (attnzoo has the extra axes)."""
    return view[1], view[0]


def _rename(key: str, pairs: Sequence[tuple[str, str]]) -> str:
    match = max((p for p in pairs if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    return key if match is None else match[1] + key[len(match[0]) :]


@dataclass(frozen=True)
class KeyMap:
    """Longest-prefix renames ``(official prefix, attnzoo prefix)`` and views by attnzoo key."""

    renames: Sequence[tuple[str, str]] = ()
    views: Mapping[str, View] = field(default_factory=dict)

    def to_attnzoo(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Official keys -> attnzoo keys."""
        out = {}
        for key, value in state_dict.items():
            ours = _rename(key, self.renames)
            out[ours] = self.views[ours][0](value) if ours in self.views else value
        return out

    def to_official(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """attnzoo keys -> official keys."""
        back = [(b, a) for a, b in self.renames]
        return {
            _rename(key, back): self.views[key][1](value) if key in self.views else value
            for key, value in state_dict.items()
        }
