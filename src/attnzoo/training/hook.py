"""The score-perturbation hook that the shared softmax kernel consults.

While a :func:`score_perturbation` context is active, :func:`attnzoo.kernels.attention.attention`
takes its materialised path and hands the masked pre-softmax scores
``S = scale * Q K^T + bias (+ -inf where masked)``, ``(B, h, N_q, N_k)``, of every call to the
active perturbation, then normalises what it returns::

    P = softmax(perturbation(index, S, allowed))

``index`` counts the kernel calls made inside the context (0, 1, ...), so a training step can run
the same forward twice and add, at each call, a perturbation computed from the first run.
``allowed`` is the bool mask of keys a query may attend to (``None`` when nothing is masked).
Only mechanisms that form their scores through that kernel (directly, or through the windowed and
grouped kernels built on it) are reached; :mod:`attnzoo.training.adversarial` checks that every
attnzoo mechanism of a model was, and raises :class:`PerturbationError` naming any that was not.
This module imports nothing from attnzoo, so the kernels can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["Perturbation", "PerturbationError", "perturb", "perturbing", "score_perturbation"]

Perturbation = Callable[[int, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""``(index, scores (B, h, N_q, N_k), allowed | None) -> perturbed scores`` of the same shape."""


class PerturbationError(ValueError):
    """A model cannot be trained with attention perturbations as asked: one of its mechanisms forms
    no softmax scores through the shared kernel, or its kernel calls differ between two forwards."""


class _Active:
    def __init__(self, fn: Perturbation) -> None:
        self.fn = fn
        self.calls = 0


_ACTIVE: list[_Active] = []


def perturbing() -> bool:
    """True while a :func:`score_perturbation` context is active (the kernel then materialises)."""
    return bool(_ACTIVE)


def perturb(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Called by the kernel: pass ``scores (B, h, N_q, N_k)`` through every active perturbation
    (innermost last) and return the result."""
    for active in _ACTIVE:
        out = active.fn(active.calls, scores, allowed)
        active.calls += 1
        if not isinstance(out, torch.Tensor) or out.shape != scores.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise PerturbationError(
                f"a score perturbation must return a tensor of the scores' shape {tuple(scores.shape)}, "
                f"got {got}"
            )
        scores = out
    return scores


@contextmanager
def score_perturbation(fn: Perturbation) -> Iterator[None]:
    """Apply ``fn`` to the pre-softmax scores of every shared-kernel call inside the block."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    active = _Active(fn)
    _ACTIVE.append(active)
    try:
        yield
    finally:
        _ACTIVE.remove(active)
