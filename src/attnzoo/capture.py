"""One library-wide way to read the attention weights of any attention-matrix mechanism.

Every attnzoo kernel that forms an attention matrix reports it through :func:`record` while a
:class:`capture` context is active; outside a capture the kernels take their fast paths and
nothing is recorded. Records are named after the module's path inside the model given to the
capture (``model.named_modules()``), so the same names work for analysis and plots::

    with attnzoo.capture(model) as cap:
        model(x, size=(14, 14))
    cap["blocks.0.attn"][0].probs  # (B, h, N_q, N_k)

Hugging Face ``transformers`` models are captured the same way when they run eager attention or
one of attnzoo's implementations (``attnzoo_mhsa`` and the others of :mod:`attnzoo.integrations.hf`,
``attnzoo_edit``; all listed in :data:`attnzoo.analysis.hf.PROBABILITY_IMPLEMENTATIONS`). While a
capture of such a model is active, the eager attention function its attention modules call is
wrapped (see :mod:`attnzoo.analysis.hf`), and attnzoo's implementations compute through the
recording kernels; either way each call reports its probabilities, its allowed-key mask (when the
call is masked) and, on request, its pre-softmax scores and values, under the attention module's name::

    model = AutoModel.from_pretrained(path, attn_implementation="eager")  # or "attnzoo_mhsa"
    with attnzoo.capture(model, values=True, hidden=True) as cap:
        model(**batch)
    cap["encoder.layer.3.attention.self"][0].probs

Capturing does not change outputs: a kernel under capture computes the same function through
its explicit (materialised) path, and a wrapped Hugging Face attention calls the model's own
eager function with the same arguments.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["AttentionRecord", "capture", "capturing", "current_module", "module_scope", "record", "wants"]

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
        values: the values the probabilities average, ``(B, h, N_k, d_v)`` (grouped key/value
            heads expanded to the query heads), when ``capture(values=True)`` and the recording
            site provides them.
        hidden: the hidden states entering the recording module, ``(B, N, C)`` (its first tensor
            argument), when ``capture(hidden=True)``.
        mask: bool, broadcastable to ``probs``, True where a key was allowed (padding and causal
            masks), when the recording site provides it.
    """

    name: str
    kind: str
    probs: torch.Tensor
    scores: torch.Tensor | None = None
    values: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @property
    def num_heads(self) -> int:
        return self.probs.shape[1]


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    hidden = kwargs.get("hidden_states")
    if isinstance(hidden, torch.Tensor):
        return hidden
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


class capture:
    """Record the attention matrices computed inside the ``with`` block.

    Args:
        model: the model whose module names label the records (optional; a capture of a model
            that records nothing warns when it ends: nothing in it formed an attention matrix).
            A Hugging Face ``transformers`` model must use eager attention
            (``attn_implementation="eager"``) or an
            ``attnzoo_*`` implementation (``ValueError`` otherwise, e.g. for ``"sdpa"``); without
            ``model``, ``transformers`` attention is still recorded (as ``"<unnamed>"``) but its
            implementation is not checked.
        scores: also keep pre-softmax scores.
        detach: store detached copies (default) so captured tensors hold no graph.
        values: also keep the values each attention matrix averages (where the site reports them).
        hidden: also keep the hidden states entering each recording module (needs ``model``).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        scores: bool = False,
        detach: bool = True,
        values: bool = False,
        hidden: bool = False,
    ):
        if hidden and model is None:
            raise ValueError("capture(hidden=True) needs the model whose module inputs to keep")
        self.scores = scores
        self.detach = detach
        self.values = values
        self.hidden = hidden
        self.model = model
        self.records: list[AttentionRecord] = []
        self._names: dict[int, str] = (
            {id(m): n for n, m in model.named_modules()} if model is not None else {}
        )
        self._inputs: dict[int, torch.Tensor] = {}
        self._stack: ExitStack | None = None

    def __enter__(self) -> capture:
        stack = ExitStack()
        if self.model is not None:
            from attnzoo.analysis.hf import patched_attention, uses_transformers

            if uses_transformers(self.model):
                stack.enter_context(patched_attention(self.model))
        elif "transformers" in sys.modules:
            from attnzoo.analysis.hf import patched_attention

            stack.enter_context(patched_attention())
        if self.hidden:
            # keep each module's input only while it runs: records are made inside its forward
            for module in self.model.modules():  # type: ignore[union-attr]
                stack.callback(module.register_forward_pre_hook(self._keep_input, with_kwargs=True).remove)
                stack.callback(module.register_forward_hook(self._drop_input, always_call=True).remove)
        self._stack = stack
        _ACTIVE.append(self)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        _ACTIVE.remove(self)
        self._inputs.clear()
        if self._stack is not None:
            self._stack.close()
            self._stack = None
        if exc_type is None and self.model is not None and not self.records:
            warnings.warn(
                f"attnzoo.capture recorded no attention in {type(self.model).__name__}: it ran no "
                "module that forms an attention matrix (attnzoo softmax-type mechanisms, or transformers "
                "attention under eager or an attnzoo_* implementation); mechanisms without one (linear "
                "attention, SE, ...) have nothing to capture",
                stacklevel=2,
            )

    def _keep_input(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = _first_tensor(args, kwargs)
        if x is not None:
            self._inputs[id(module)] = x

    def _drop_input(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._inputs.pop(id(module), None)

    def _add(
        self,
        kind: str,
        probs: torch.Tensor,
        scores: torch.Tensor | None,
        values: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        module = _MODULES[-1] if _MODULES else None
        name = self._names.get(id(module), "<unnamed>") if module is not None else "<unnamed>"
        scores = scores if self.scores else None
        values = values if self.values else None
        hidden = self._inputs.get(id(module)) if self.hidden and module is not None else None
        if self.detach:
            probs = probs.detach()
            scores, values, hidden = (t.detach() if t is not None else None for t in (scores, values, hidden))
        self.records.append(AttentionRecord(name, kind, probs, scores, values, hidden, mask))

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


def wants(field: str) -> bool:
    """Whether an active capture keeps ``field`` (``"scores"``, ``"values"``, ``"hidden"``), so a
    recording site can skip computing what nobody keeps."""
    return any(getattr(cap, field) for cap in _ACTIVE)


def record(
    probs: torch.Tensor,
    scores: torch.Tensor | None = None,
    *,
    kind: str = "softmax",
    values: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> None:
    """Called by kernels: hand an attention matrix (and optionally its scores, values and
    allowed-key mask, see :class:`AttentionRecord`) to every active capture."""
    for cap in _ACTIVE:
        cap._add(kind, probs, scores, values, mask)


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
