"""One library-wide way to read the attention weights of any attention-matrix mechanism.

Every attnzoo kernel that forms an attention matrix reports it through :func:`record` while a
:class:`capture` context is active; outside a capture the kernels take their fast paths and
nothing is recorded. Records are named after the module's path inside the model given to the
capture (``model.named_modules()``), so the same names work for analysis and plots::

    with attnzoo.capture(model) as cap:
        model(x, size=(14, 14))
    cap["blocks.0.attn"][0].probs  # (B, h, N_q, N_k)

Capturing does not change outputs: a kernel under capture computes the same function through
its explicit (materialised) path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["AttentionRecord", "capture", "capturing", "current_module", "module_scope", "record"]

_ACTIVE: list[capture] = []
_MODULES: list[nn.Module] = []


@dataclass
class AttentionRecord:
    """One recorded attention matrix.

    Attributes:
        name: the module's path inside the captured model (``""`` if it is the model itself,
            ``"<unnamed>"`` if the module is outside it).
        kind: what the matrix is (``"softmax"``, ``"reversed"``, ``"agent"``, ...).
        probs: attention probabilities, ``(B, h, N_q, N_k)``; rows sum to one over the axis
            the mechanism normalises.
        scores: pre-softmax scores of the same shape, when ``capture(scores=True)``.
    """

    name: str
    kind: str
    probs: torch.Tensor
    scores: torch.Tensor | None = None


class capture:
    """Record the attention matrices computed inside the ``with`` block.

    Args:
        model: the model whose module names label the records (optional).
        scores: also keep pre-softmax scores.
        detach: store detached copies (default) so captured tensors hold no graph.
    """

    def __init__(self, model: nn.Module | None = None, *, scores: bool = False, detach: bool = True):
        self.scores = scores
        self.detach = detach
        self.records: list[AttentionRecord] = []
        self._names: dict[int, str] = (
            {id(m): n for n, m in model.named_modules()} if model is not None else {}
        )

    def __enter__(self) -> capture:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.remove(self)

    def _add(self, kind: str, probs: torch.Tensor, scores: torch.Tensor | None) -> None:
        module = _MODULES[-1] if _MODULES else None
        name = self._names.get(id(module), "<unnamed>") if module is not None else "<unnamed>"
        if self.detach:
            probs = probs.detach()
            scores = scores.detach() if scores is not None else None
        self.records.append(AttentionRecord(name, kind, probs, scores if self.scores else None))

    def __getitem__(self, name: str) -> list[AttentionRecord]:
        found = [r for r in self.records if r.name == name]
        if not found:
            raise KeyError(f"no attention recorded for {name!r}; recorded: {self.names()}")
        return found

    def names(self) -> list[str]:
        """Module names that recorded something, in first-seen order."""
        return list(dict.fromkeys(r.name for r in self.records))


def capturing() -> bool:
    """True while at least one :class:`capture` is active (kernels then take explicit paths)."""
    return bool(_ACTIVE)


def record(probs: torch.Tensor, scores: torch.Tensor | None = None, *, kind: str = "softmax") -> None:
    """Called by kernels: hand an attention matrix to every active capture."""
    for cap in _ACTIVE:
        cap._add(kind, probs, scores)


def current_module() -> nn.Module | None:
    """The innermost attnzoo module currently running, or ``None``."""
    return _MODULES[-1] if _MODULES else None


@contextmanager
def module_scope(module: nn.Module) -> Iterator[None]:
    """Mark ``module`` as running, so that records made inside carry its name."""
    if not _ACTIVE:
        yield
        return
    _MODULES.append(module)
    try:
        yield
    finally:
        _MODULES.pop()
