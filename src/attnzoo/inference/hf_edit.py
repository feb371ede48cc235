"""Apply an attention-probability edit inside a Hugging Face ``transformers`` model.

``transformers`` 5.x attention modules look their attention function up on every call in
``ALL_ATTENTION_FUNCTIONS`` by ``config._attn_implementation``. This module registers one more
implementation, ``"attnzoo_edit"`` (with the eager float mask in ``ALL_MASK_ATTENTION_FUNCTIONS``),
that computes, per attention module,

    P = softmax(scaling * Q K^T + mask)          (attnzoo.kernels.attention_reference)
    P' = edit(P, module)                          (the inference-time method)
    O = P' V

(the body shared with :mod:`attnzoo.integrations.hf`'s functions, which validates the call and
folds its mask into one additive bias) and :func:`edit_attention` switches a model to it while
active (restoring the previous implementation afterwards). Grouped key/value heads are expanded to
the query heads. Modules without an edit registered compute plain softmax attention through the
same path.
:func:`replace_attention` installs a whole attention function per module instead (methods that
change which keys are attended, e.g. Recycled Attention on the KV cache); it receives the
unexpanded grouped key/value heads and the float mask of ``(B, 1, N_q, N_k)``.

Under an active :class:`attnzoo.capture` (entered *before* the edit context: the capture of a
``transformers`` model checks for eager attention on entry), each module reports the softmax
probabilities (``kind="softmax"``) and, when edited, the probabilities actually used
(``kind="edited"``) under its own name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from attnzoo.capture import module_scope
from attnzoo.integrations._hf_core import ProbEdit, edited_softmax, prepare

__all__ = [
    "IMPLEMENTATION",
    "AttentionFn",
    "ProbEdit",
    "edit_attention",
    "hf_attention_layers",
    "replace_attention",
]

IMPLEMENTATION = "attnzoo_edit"

AttentionFn = Callable[..., tuple[torch.Tensor, "torch.Tensor | None"]]
"""``fn(module, query (B, h, N_q, d), key (B, h_kv, N_k, d), value (B, h_kv, N_k, d_v), attention_mask,
scaling) -> (out (B, h, N_q, d_v), probs or None)``."""

_EDITS: dict[int, ProbEdit] = {}
_REPLACED: dict[int, AttentionFn] = {}
_REGISTERED = False


def _edited_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    with module_scope(module):
        replaced = _REPLACED.get(id(module))
        if replaced is not None:
            out, probs = replaced(module, query, key, value, attention_mask, scaling)
            return out.transpose(1, 2).contiguous(), probs
        call = prepare(IMPLEMENTATION, module, query, key, value, attention_mask, scaling, dropout, kwargs)
        out, probs = edited_softmax(call, _EDITS.get(id(module)))
        return out.transpose(1, 2).contiguous(), probs


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, _edited_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)
    _REGISTERED = True


def hf_attention_layers(model: nn.Module) -> dict[int, nn.Module]:
    """``{layer_idx: attention module}`` of a decoder-only ``transformers`` model (modules with a
    ``layer_idx`` attribute and a ``q_proj``, e.g. ``LlamaAttention``)."""
    found = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and hasattr(module, "q_proj") and hasattr(module, "config"):
            found[idx] = module
    if not found:
        raise ValueError(f"{type(model).__name__} has no attention modules with a layer_idx and a q_proj")
    return found


@contextmanager
def _switched(model: nn.Module, table: dict[int, Any], entries: Mapping[nn.Module, Any]) -> Iterator[None]:
    own = {id(m) for m in model.modules()}
    foreign = [type(m).__name__ for m in entries if id(m) not in own]
    if foreign:
        raise ValueError(f"modules that are not part of the model: {foreign}")
    if any(id(m) in _EDITS or id(m) in _REPLACED for m in entries):
        raise RuntimeError("attention of a module that is already being edited or replaced")
    _register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(IMPLEMENTATION)
    if model.config._attn_implementation != IMPLEMENTATION:
        model.set_attn_implementation(previous)
        raise ValueError(
            f"{type(model).__name__} cannot switch its attention implementation (it does not use "
            "transformers' AttentionInterface), so attention edits cannot be applied to it"
        )
    table.update({id(m): fn for m, fn in entries.items()})
    try:
        yield
    finally:
        for m in entries:
            table.pop(id(m), None)
        model.set_attn_implementation(previous)


@contextmanager
def edit_attention(model: nn.Module, edits: Mapping[nn.Module, ProbEdit]) -> Iterator[None]:
    """Run ``model`` with each ``edits[module]`` applied to that attention module's probabilities.

    Args:
        model: a ``transformers`` model that supports ``set_attn_implementation``.
        edits: ``{attention module: edit}``; the modules must belong to ``model``.

    Raises:
        ValueError: a module is not part of ``model``.
        RuntimeError: a module is already being edited.
    """
    with _switched(model, _EDITS, edits):
        yield


@contextmanager
def replace_attention(model: nn.Module, functions: Mapping[nn.Module, AttentionFn]) -> Iterator[None]:
    """Run ``model`` with ``functions[module]`` computing that attention module's attention
    (signature :data:`AttentionFn`); other modules compute plain softmax attention.

    Raises:
        ValueError: a module is not part of ``model``.
        RuntimeError: a module is already being edited or replaced.
    """
    with _switched(model, _REPLACED, functions):
        yield
