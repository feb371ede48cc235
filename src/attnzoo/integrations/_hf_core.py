"""The shared body of attnzoo's Hugging Face ``transformers`` attention functions.

``transformers`` 5.x attention modules call ``fn(module, query (B, h, N_q, d), key (B, h_kv, N_k, d),
value (B, h_kv, N_k, d_v), attention_mask, scaling=..., dropout=..., **kwargs)`` and expect
``(out (B, N_q, h, d_v), weights (B, h, N_q, N_k) or None)``. :func:`prepare` validates one such call
and folds its mask into one additive float bias; :func:`softmax_attention` and :func:`edited_softmax`
compute softmax attention through :mod:`attnzoo.kernels.attention`; :func:`hf_function` wraps a body
written on an :class:`AttentionCall` into the function ``transformers`` calls.

Masks. :func:`attnzoo_mask`, the mask function registered for every attnzoo implementation, is
``transformers``' ``sdpa_mask`` (so the mask is skipped, ``None``, exactly when SDPA's would be) cast
to eager's additive float mask (0 where a key is allowed, ``finfo(dtype).min`` elsewhere), so that a
query row without any allowed key (a left-padding query) stays finite as in eager attention. A
skipped mask follows ``sdpa_attention_forward``: the call is causal when it has more than one query
and the module is causal (``is_causal`` keyword, else ``module.is_causal``, default True), and with
more keys than queries (an empty static cache at prefill) the keys are cropped to the queries.
Boolean masks (models that build their own) are cast to the same float form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from attnzoo.capture import capturing, module_scope, record
from attnzoo.integrations import IntegrationError
from attnzoo.kernels.attention import allowed_keys, attention, attention_reference

__all__ = [
    "AttentionCall",
    "Binding",
    "Body",
    "ProbEdit",
    "attnzoo_mask",
    "binding",
    "bindings",
    "edited_softmax",
    "hf_function",
    "hidden_keys",
    "prepare",
    "softmax_attention",
    "wants_weights",
    "with_pattern",
]

ProbEdit = Callable[[torch.Tensor, nn.Module], torch.Tensor]
"""``edit(probs (B, h, N_q, N_k), module) -> probs`` applied inside one attention module."""

# keyword arguments some models pass that change the attention math beyond softmax(scale QK^T + mask)
_REFUSED = {
    "softcap": "logit soft-capping",
    "s_aux": "learned sink logits",
    "sinks": "learned sink logits",
    "position_bias": "an additive position bias",
}

_ATTR = "_attnzoo_hf"


def attnzoo_mask(*args: Any, dtype: torch.dtype = torch.float32, **kwargs: Any) -> torch.Tensor | None:
    """``sdpa_mask(*args, **kwargs)`` as an additive float mask ``(B, 1, N_q, N_k)`` of ``dtype``
    (``None`` where SDPA's mask is skipped)."""
    from transformers.masking_utils import sdpa_mask

    mask = sdpa_mask(*args, **kwargs)
    if mask is None:
        return None
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


@dataclass
class AttentionCall:
    """One validated attention-function call.

    Attributes:
        implementation: the ``attn_implementation`` name (for messages).
        module: the calling attention module.
        query: ``(B, h, N_q, d)``; the queries are the last ``N_q`` of the ``N_k`` keys.
        key, value: ``(B, h_kv, N_k, d)``, ``(B, h_kv, N_k, d_v)``, grouped heads not expanded.
        bias: additive float mask broadcastable to ``(B, h, N_q, N_k)`` (``finfo.min`` = hidden), or None.
        causal: apply the causal pattern on top of ``bias`` (set only when the mask was skipped).
        model_causal: whether the module is a causal (decoder) attention.
        scaling: score scale, ``None`` for ``d ** -0.5``.
        dropout: attention dropout (0 unless the module is training).
        weights: whether the caller asked for the attention weights (``output_attentions``).
        extra: the remaining keyword arguments of the call.
    """

    implementation: str
    module: nn.Module
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    bias: torch.Tensor | None
    causal: bool
    model_causal: bool
    scaling: float | None
    dropout: float
    weights: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_q(self) -> int:
        return self.query.shape[-2]

    @property
    def n_k(self) -> int:
        return self.key.shape[-2]

    @property
    def heads(self) -> int:
        return self.query.shape[1]

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(key, value)`` with the grouped key/value heads repeated to the ``h`` query heads."""
        rep = self.heads // self.key.shape[1]
        if rep == 1:
            return self.key, self.value
        return self.key.repeat_interleave(rep, dim=1), self.value.repeat_interleave(rep, dim=1)

    def refuse(self, what: str) -> IntegrationError:
        """An error naming this implementation and module, saying why the call cannot be served."""
        return IntegrationError(f"{self.implementation} in {type(self.module).__name__}: {what}")


def _check_qkv(implementation: str, query: Any, key: Any, value: Any) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{implementation}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4 or not t.is_floating_point():
            raise IntegrationError(
                f"{implementation}: {name} must be a floating (B, heads, N, d) tensor, got "
                f"{t.dtype} of shape {tuple(t.shape)}"
            )
    b, h, _, d = query.shape
    if key.shape[0] != b or key.shape[-1] != d or h % key.shape[1]:
        raise IntegrationError(
            f"{implementation}: key {tuple(key.shape)} does not fit query {tuple(query.shape)} (same batch "
            "and head size, key heads dividing the query heads)"
        )
    if value.shape[:3] != key.shape[:3]:
        raise IntegrationError(
            f"{implementation}: value {tuple(value.shape)} must match key {tuple(key.shape)} on (B, heads, N)"
        )


def _bias(implementation: str, mask: Any, query: torch.Tensor, n_k: int) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"{implementation}: attention_mask must be a torch.Tensor or None, got {type(mask).__name__} "
            "(a flex-attention BlockMask belongs to attn_implementation='flex_attention')"
        )
    b, h, n_q, _ = query.shape
    fits = (
        mask.dim() == 4
        and mask.shape[0] in (1, b)
        and mask.shape[1] in (1, h)
        and mask.shape[2] in (1, n_q)
        and mask.shape[3] >= n_k
    )
    if not fits or not (mask.dtype == torch.bool or mask.is_floating_point()):
        raise IntegrationError(
            f"{implementation}: attention_mask must be a bool or float tensor broadcastable to "
            f"(B, h, N_q, N_k) = {(b, h, n_q, n_k)}, got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    mask = mask[..., :n_k]
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=query.dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(query.dtype).min)
    return mask


def wants_weights(module: nn.Module, kwargs: dict[str, Any]) -> bool:
    """Whether the call asks for the attention weights: ``output_attentions`` (keyword or config)."""
    default = getattr(getattr(module, "config", None), "output_attentions", False)
    return bool(kwargs.get("output_attentions", default))


def prepare(
    implementation: str,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> AttentionCall:
    """Validate one call (errors name the argument) and fold its mask (module docstring)."""
    _check_qkv(implementation, query, key, value)
    for name, what in _REFUSED.items():
        if kwargs.get(name) is not None:
            raise IntegrationError(
                f"{implementation}: {type(module).__name__} passes {name}=..., {what} that attnzoo's "
                "softmax attention does not apply; use the model's eager attention"
            )
    if scaling is not None and (isinstance(scaling, bool) or not isinstance(scaling, (int, float))):
        raise TypeError(f"{implementation}: scaling must be a number or None, got {type(scaling).__name__}")
    if not 0.0 <= float(dropout) < 1.0:
        raise IntegrationError(f"{implementation}: dropout must be in [0, 1), got {dropout}")
    is_causal = kwargs.get("is_causal")
    model_causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    bias = _bias(implementation, attention_mask, query, key.shape[-2])
    n_q = query.shape[-2]
    causal = n_q > 1 and bias is None and model_causal
    if causal and key.shape[-2] > n_q:  # an empty static cache at prefill, as sdpa_attention_forward
        key, value = key[:, :, :n_q], value[:, :, :n_q]
    rest = {k: v for k, v in kwargs.items() if k not in ("is_causal", "output_attentions")}
    return AttentionCall(
        implementation,
        module,
        query,
        key,
        value,
        bias,
        causal,
        model_causal,
        None if scaling is None else float(scaling),
        float(dropout) if module.training else 0.0,
        wants_weights(module, kwargs),
        rest,
    )


def with_pattern(bias: torch.Tensor | None, pattern: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``bias`` with the keys outside the bool ``pattern`` (broadcastable to ``(B, h, N_q, N_k)``)
    hidden (``finfo.min``, as the model's own mask)."""
    base = torch.zeros((), dtype=dtype, device=pattern.device) if bias is None else bias
    return torch.where(pattern, base, torch.finfo(base.dtype).min)


def softmax_attention(
    call: AttentionCall, pattern: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``softmax(scaling Q K^T + bias) V`` restricted to ``pattern`` (bool, broadcastable to
    ``(B, h, N_q, N_k)``), through SDPA (:func:`attention`), or through the materialised
    :func:`attention_reference` when the call asks for the weights. Returns ``(out (B, h, N_q, d_v),
    probs or None)``."""
    key, value = call.expanded()
    bias = call.bias if pattern is None else with_pattern(call.bias, pattern, call.query.dtype)
    kw = {"bias": bias, "causal": call.causal, "scale": call.scaling, "dropout_p": call.dropout}
    if call.weights:
        return attention_reference(call.query, key, value, return_weights=True, **kw)
    return attention(call.query, key, value, **kw), None


def edited_softmax(call: AttentionCall, edit: ProbEdit | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``P = softmax(scaling Q K^T + bias)`` (:func:`attention_reference`), ``P' = edit(P, module)``,
    ``out = dropout(P') V``; returns ``(out (B, h, N_q, d_v), P')``. Under an active capture the edited
    map is also recorded (``kind="edited"``, with the allowed-key mask of ``P``)."""
    key, value = call.expanded()
    _, probs = attention_reference(
        call.query, key, value, bias=call.bias, causal=call.causal, scale=call.scaling, return_weights=True
    )
    if edit is not None:
        probs = edit(probs, call.module)
        if capturing():
            allowed = allowed_keys(call.query, key, bias=call.bias, causal=call.causal)
            record(probs, kind="edited", mask=allowed)
    weights = F.dropout(probs, call.dropout) if call.dropout else probs
    return weights @ value, probs


def hidden_keys(bias: torch.Tensor) -> torch.Tensor:
    """Bool ``(B or 1, N_k)``: keys that no query of any head may attend to (padding)."""
    return (bias <= torch.finfo(bias.dtype).min / 2).all(dim=2).all(dim=1)


Body = Callable[[AttentionCall], tuple[torch.Tensor, "torch.Tensor | None"]]


def hf_function(implementation: str, body: Body) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """The ``transformers`` attention function that validates its call with :func:`prepare`, runs
    ``body(call) -> (out (B, h, N_q, d_v), probs)`` in the module's capture scope, and returns
    ``(out (B, N_q, h, d_v), probs if output_attentions else None)``."""

    def attention_function(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        call = prepare(implementation, module, query, key, value, attention_mask, scaling, dropout, kwargs)
        with module_scope(module):
            out, probs = body(call)
        return out.transpose(1, 2).contiguous(), probs if call.weights else None

    attention_function.__name__ = attention_function.__qualname__ = f"{implementation}_forward"
    return attention_function


@dataclass
class Binding:
    """What :func:`attnzoo.integrations.hf.configure` attached to one attention module.

    Attributes:
        settings: the mechanism's validated settings (a frozen dataclass).
        state: per-module data of the mechanism (heads to calibrate, a recycled-key state, ...).
        pre_hooks: ``(module, hook)`` forward pre-hooks (with kwargs) to install with the binding.
        handles: the installed hooks, removed when the binding is replaced or removed.
    """

    settings: Any
    state: Any = None
    pre_hooks: tuple[tuple[nn.Module, Callable[..., None]], ...] = ()
    handles: list[RemovableHandle] = field(default_factory=list)


def bindings(module: nn.Module) -> dict[str, Binding]:
    """``{mechanism: Binding}`` attached to ``module`` (created empty on first use)."""
    found = module.__dict__.get(_ATTR)
    if found is None:
        found = module.__dict__[_ATTR] = {}
    return found


def binding(module: nn.Module, mechanism: str) -> Binding | None:
    """The binding of ``mechanism`` on ``module``, or ``None``."""
    return module.__dict__.get(_ATTR, {}).get(mechanism)
