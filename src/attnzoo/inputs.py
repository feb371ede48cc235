"""Example inputs for any registered mechanism, built from its family contract and its card.

Shared by the conformance suite, the benchmark harness and the CLI, so that all three call a
mechanism the same way. A mechanism that needs extra forward arguments (a region map, initial
slots, ...) defines ``example_kwargs(batch, size, dtype, generator) -> dict`` and they are added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnzoo.registry import Card

__all__ = ["Example", "default_size", "example_inputs"]

_DEFAULT_SIZES = {0: (7,), 1: (7,), 2: (5, 7), 3: (3, 4, 5)}


@dataclass
class Example:
    """Positional ``args`` and keyword ``kwargs`` for ``module(*args, **kwargs)``."""

    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        """Floating tensors among the inputs (those a gradient can reach)."""
        found = [*self.args, *self.kwargs.values()]
        return [t for t in found if isinstance(t, torch.Tensor) and t.is_floating_point()]


def default_size(card: Card) -> tuple[int, ...]:
    """The spatial size the conformance suite uses first for ``card``."""
    sizes = card.conformance.get("sizes")
    return tuple(sizes[0]) if sizes else _DEFAULT_SIZES[card.spatial_dims]


def example_inputs(
    module: nn.Module,
    *,
    batch: int = 2,
    size: tuple[int, ...] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    context_size: tuple[int, ...] | None = None,
) -> Example:
    """Random inputs that satisfy ``module``'s family contract.

    Args:
        module: a registered mechanism instance (it carries ``card``).
        batch: B.
        size: spatial size; for sequences ``(N,)``; for gates the size of ``x``.
        dtype, device: of the floating inputs.
        generator: for reproducible draws.
        context_size: for cross-attention, the size of ``context`` (``(M,)``, or ``(H, W)`` for a
            mechanism with ``context_spatial_dims == 2``); default from ``card.conformance``.
    """
    card: Card = module.card
    size = default_size(card) if size is None else tuple(size)
    n = 1
    for s in size:
        n *= s

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)

    family = card.family
    if family == "token_mixer":
        kwargs: dict[str, Any] = {"size": size} if card.spatial_dims >= 2 else {}
        prefix = getattr(module, "num_prefix_tokens", 0)
        ex = Example((randn(batch, prefix + n, module.dim),), kwargs)
    elif family == "cross_attention":
        ctx_nd = getattr(module, "context_spatial_dims", 0)
        if context_size is not None:
            ctx_size = tuple(context_size)
            m = 1
            for s in ctx_size:
                m *= s
        else:
            m = int(card.conformance.get("context_len", 6))
            ctx_size = tuple(card.conformance.get("context_size", (2, 3)))
            if ctx_nd >= 2:
                m = 1
                for s in ctx_size:
                    m *= s
        kwargs = {"size": ctx_size} if ctx_nd >= 2 else {}
        ex = Example((randn(batch, n, module.dim), randn(batch, m, module.context_dim)), kwargs)
    elif family == "feature_map":
        ex = Example((randn(batch, module.channels, *size),))
    elif family == "gate":
        factor = int(card.conformance.get("gate_factor", 2))
        g_size = tuple(max(1, s // factor) for s in size)
        ex = Example((randn(batch, module.channels, *size), randn(batch, module.gate_channels, *g_size)))
    elif family == "pooling":
        ex = Example((randn(batch, n, module.dim),))
    else:
        raise ValueError(f"unknown family {family!r}")
    extra = getattr(module, "example_kwargs", None)
    if extra is not None:
        ex.kwargs.update(extra(batch, size, dtype=dtype, device=device, generator=generator))
    return ex
