"""Hugging Face ``transformers`` attention: capture and per-head edits through the eager function.

``transformers`` (5.x) attention modules fetch their attention function on every call with
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)``
and call it as ``fn(module, query (B, h, N_q, d), key (B, h_kv, N_k, d), value (B, h_kv, N_k, d_v),
attention_mask, scaling=..., dropout=..., **kwargs) -> (out (B, N_q, h, d_v), probs (B, h, N_q, N_k))``.
While :func:`patched_attention` is active, ``get_interface`` hands out the model's own eager
function wrapped so that each call

* applies the per-head edits registered for that module (:func:`edit_heads`): query scaling
  (Ships' "undifferentiated attention") and zeroing of a head's output (head ablation);
* reports ``probs`` to the active :func:`attnzoo.capture` under the module's name, with the
  pre-softmax scores ``scaling * Q K^T + attention_mask`` and the values (both with grouped
  key/value heads expanded to the query heads) only when a capture keeps them.

The wrapped call passes its arguments unchanged to the model's eager function, so outputs are
bit-identical with and without capture. A model running one of attnzoo's own implementations
(``attnzoo_mhsa`` and the others of :mod:`attnzoo.integrations.hf`, or ``attnzoo_edit``) needs no
wrapping: its attention functions compute through attnzoo's kernels, which record under the module's
name. Models loaded with ``sdpa``/flash attention do not return probabilities; :func:`require_eager`
refuses them with the fix instead of silently recording nothing.

Limits: the recorded ``probs`` are what the eager function returns (after attention dropout in
training mode); the recorded ``scores`` are recomputed as ``scaling * Q K^T + mask``, so for models
whose eager function transforms scores further (logit soft-capping, learned sink logits) they are
the scores before that transformation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnzoo.capture import capturing, module_scope, record, wants
from attnzoo.integrations._hf_names import IMPLEMENTATIONS
from attnzoo.kernels.attention import allowed_keys

__all__ = [
    "HeadEdit",
    "edit_heads",
    "hf_attention_modules",
    "num_heads_of",
    "patched_attention",
    "require_eager",
    "uses_transformers",
]


@dataclass(frozen=True)
class HeadEdit:
    """Edits applied inside one attention module's call.

    Attributes:
        zero_heads: heads whose output (their slice of ``probs @ V``) is set to zero.
        query_scale: ``{head: factor}`` multiplying that head's queries before the scores.
    """

    zero_heads: frozenset[int] = frozenset()
    query_scale: Mapping[int, float] = field(default_factory=dict)


_EDITS: dict[int, HeadEdit] = {}
_DEPTH = 0


def hf_attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the ``transformers`` attention modules in ``model``: the modules that
    own a ``config`` with an ``_attn_implementation`` and project queries themselves."""
    found = {}
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            continue
        if "Attention" in type(module).__name__ and any(
            hasattr(module, a) for a in ("q_proj", "query", "qkv", "c_attn", "qkv_proj", "Wqkv")
        ):
            found[name] = module
    return found


def _configured(model: nn.Module) -> list[nn.Module]:
    """Modules of ``model`` that carry a ``transformers`` config with an attention implementation."""
    return [m for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")]


def uses_transformers(model: nn.Module) -> bool:
    """Whether ``model`` contains ``transformers`` modules (models or attention layers)."""
    return bool(_configured(model))


# Implementations whose attention probabilities a capture records: transformers' eager attention
# (wrapped here), the edit implementation of :mod:`attnzoo.inference.hf_edit` and the implementations
# of :mod:`attnzoo.integrations.hf` (both compute through attnzoo's recording kernels).
PROBABILITY_IMPLEMENTATIONS = ("eager", "attnzoo_edit", *IMPLEMENTATIONS)


def require_eager(
    model: nn.Module,
    *,
    allowed: tuple[str, ...] = PROBABILITY_IMPLEMENTATIONS,
    purpose: str = "attention capture needs an implementation that returns the probabilities",
) -> None:
    """Raise ``ValueError`` (saying ``purpose``) unless every ``transformers`` config in ``model``
    selects one of the attention implementations ``allowed`` (default: those a capture records,
    :data:`PROBABILITY_IMPLEMENTATIONS`)."""
    bad = sorted(
        {
            f"{type(m).__name__}: {m.config._attn_implementation!r}"
            for m in _configured(model)
            if m.config._attn_implementation not in allowed
        }
    )
    if bad:
        fix = "from_pretrained(..., attn_implementation='eager') or model.set_attn_implementation('eager')"
        if "attnzoo_mhsa" in allowed:
            fix += " (or 'attnzoo_mhsa' after attnzoo.integrations.hf.register())"
        raise ValueError(
            f"{purpose} ({', '.join(allowed)}); got {', '.join(bad)}. Use eager attention: {fix}"
        )


def _expand_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def _wrap(eager: Callable[..., Any]) -> Callable[..., Any]:
    def attention_with_capture(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        edit = _EDITS.get(id(module))
        if edit is not None and edit.query_scale:
            factor = torch.ones(query.shape[1], dtype=query.dtype, device=query.device)
            for h, s in edit.query_scale.items():
                factor[h] = s
            query = query * factor.view(1, -1, 1, 1)
        out, probs = eager(module, query, key, value, attention_mask, *args, **kwargs)
        if edit is not None and edit.zero_heads:
            if out.ndim != 4 or out.shape[2] != query.shape[1]:
                raise RuntimeError(
                    f"{type(module).__name__}'s eager attention returned output of shape {tuple(out.shape)}, "
                    "not (B, N, heads, d): cannot zero single heads of this architecture"
                )
            keep = torch.ones(out.shape[2], dtype=out.dtype, device=out.device)
            keep[list(edit.zero_heads)] = 0
            out = out * keep.view(1, 1, -1, 1)
        if capturing() and probs is not None:
            heads = query.shape[1]
            k_len = key.shape[-2]
            mask = None
            if attention_mask is not None:
                m = attention_mask[..., :k_len]
                mask = allowed_keys(query, key, **({"mask": m} if m.dtype == torch.bool else {"bias": m}))
            scores = None
            if wants("scores"):
                scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
                scores = (query @ _expand_heads(key, heads).transpose(-2, -1)) * scaling
                if attention_mask is not None and attention_mask.dtype == torch.bool:
                    scores = scores.masked_fill(~mask, float("-inf"))
                elif attention_mask is not None:
                    scores = scores + attention_mask[..., :k_len]
            values = _expand_heads(value, heads) if wants("values") else None
            with module_scope(module):
                record(probs, scores, kind="softmax", values=values, mask=mask)
        return out, probs

    return attention_with_capture


@contextmanager
def patched_attention(model: nn.Module | None = None) -> Iterator[None]:
    """Wrap the eager attention function of every ``transformers`` model while active.

    Nested and concurrent uses share one patch (reference counted). With ``model``, first checks
    that its attention modules run eager attention (:func:`require_eager`).
    """
    global _DEPTH
    if model is not None:
        require_eager(model)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if _DEPTH == 0:
        original = ALL_ATTENTION_FUNCTIONS.get_interface

        def get_interface(attn_implementation: str, default: Callable[..., Any]) -> Callable[..., Any]:
            fn = original(attn_implementation, default)
            return _wrap(fn) if attn_implementation == "eager" else fn

        ALL_ATTENTION_FUNCTIONS.get_interface = get_interface
    _DEPTH += 1
    try:
        yield
    finally:
        _DEPTH -= 1
        if _DEPTH == 0:
            del ALL_ATTENTION_FUNCTIONS.get_interface


@contextmanager
def edit_heads(
    model: nn.Module,
    *,
    zero: Mapping[str, Sequence[int]] | None = None,
    query_scale: Mapping[str, Mapping[int, float]] | None = None,
) -> Iterator[None]:
    """Apply per-head edits to the named attention modules of a ``transformers`` model.

    Args:
        model: the model; its attention modules must run eager attention.
        zero: ``{module name: heads}`` whose outputs are zeroed (head ablation).
        query_scale: ``{module name: {head: factor}}`` scaling those heads' queries.

    Raises:
        KeyError: a name is not an attention module of ``model``.
        ValueError: a head index is out of range, or the model does not run eager attention (the
            edits wrap the eager function, so no other implementation would apply them).
    """
    modules = hf_attention_modules(model)
    require_eager(model, allowed=("eager",), purpose="head edits wrap the eager attention function")
    zero = dict(zero or {})
    query_scale = dict(query_scale or {})
    edits: dict[int, HeadEdit] = {}
    for name in set(zero) | set(query_scale):
        if name not in modules:
            raise KeyError(f"{name!r} is not an attention module of the model; known: {sorted(modules)}")
        module = modules[name]
        heads = num_heads_of(module)
        chosen = set(zero.get(name, ())) | set(query_scale.get(name, {}))
        if any(not 0 <= h < heads for h in chosen):
            raise ValueError(f"head indices {sorted(chosen)} out of range for {name!r} with {heads} heads")
        edits[id(module)] = HeadEdit(frozenset(zero.get(name, ())), dict(query_scale.get(name, {})))
    clash = set(edits) & set(_EDITS)
    if clash:
        raise RuntimeError("edit_heads on a module that is already being edited")
    with patched_attention():
        _EDITS.update(edits)
        try:
            yield
        finally:
            for key in edits:
                _EDITS.pop(key, None)


def num_heads_of(module: nn.Module) -> int:
    """Number of query heads of a ``transformers`` attention module."""
    for attr in ("num_heads", "num_attention_heads"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return int(module.config.num_attention_heads)
