"""The attention functions behind ``attnzoo_<mechanism>`` (see :mod:`attnzoo.integrations.hf`).

Each body receives one validated :class:`~attnzoo.integrations._hf_core.AttentionCall` and returns
``(out (B, h, N_q, d_v), probs or None)``; the math is attnzoo's own:

* ``mhsa``: :func:`attnzoo.kernels.attention` (SDPA), or :func:`attention_reference` for weights;
* ``sliding_window``: :func:`attnzoo.kernels.windowed.sliding_window_attention` (blocked) or the
  band :func:`~attnzoo.kernels.windowed.band_mask` folded into the mask;
* ``neighborhood_attention_1d``: :func:`attnzoo.kernels.neighborhood.na1d` (tiled) or
  :func:`~attnzoo.kernels.neighborhood.neighborhood_mask` folded into the mask;
* ``s2_attention``: :func:`attnzoo.kernels.windowed.grouped_attention` on each half of the heads (the
  ``s2_attention`` mixer's split) or the per-head :func:`~attnzoo.kernels.windowed.group_mask`;
* ``act``, ``var``: :func:`attnzoo.inference.act.ACTCalibration`, :class:`attnzoo.inference.var.
  VisualAttentionRedistribution` applied to the softmax probabilities;
* ``pine``, ``recycled``: :func:`attnzoo.inference.pine.pine_attention_rotated`,
  :class:`attnzoo.inference.recycled.RecycledAttention`.

The blocked/tiled kernels run when the call has no mask and the queries are the keys (encoders
without padding, unpadded causal prefill); otherwise the pattern is folded into the mask.
Patterns are laid on key positions with the queries at the last ``N_q`` keys (no or a dynamic cache).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnzoo.capture import capturing
from attnzoo.inference.act import ACTCalibration
from attnzoo.inference.pine import PineLayout, pine_attention_rotated
from attnzoo.inference.recycled import RecycledAttention
from attnzoo.inference.var import PrefillSinks
from attnzoo.integrations._hf_core import (
    AttentionCall,
    Body,
    binding,
    edited_softmax,
    hf_function,
    hidden_keys,
    softmax_attention,
)
from attnzoo.integrations._hf_names import PREFIX
from attnzoo.kernels.attention import allowed_keys, causal_mask
from attnzoo.kernels.neighborhood import na1d, neighborhood_mask
from attnzoo.kernels.windowed import band_mask, group_mask, grouped_attention, sliding_window_attention

__all__ = ["FUNCTIONS", "ACTState", "PINEState", "VARState"]


@dataclass(frozen=True)
class ACTState:
    """One layer's ACT: the calibration and the heads it calibrates (empty: plain softmax)."""

    calibration: ACTCalibration
    heads: tuple[int, ...]


@dataclass(frozen=True)
class VARState:
    """One layer's VAR: the image span and the pre-hook that finds the sinks at prefill."""

    prefill: PrefillSinks
    image_start: int
    image_len: int

    @property
    def sinks(self) -> torch.Tensor | None:
        """The prefill sink tokens ``(B, T)``, ``None`` before the layer first ran with ``attnzoo_var``."""
        return self.prefill.sinks


@dataclass(frozen=True)
class PINEState:
    """PINE's prompt layout and the model's rotary embedding (default RoPE, undone and re-applied)."""

    layout: PineLayout
    rotary: nn.Module


def _configured(call: AttentionCall, mechanism: str, example: str) -> Any:
    found = binding(call.module, mechanism)
    if found is None:
        raise call.refuse(
            f"this module has no {mechanism} settings; call attnzoo.integrations.hf.configure(model, "
            f"{mechanism!r}, {example}) first"
        )
    return found


def _self_attention(call: AttentionCall) -> None:
    if not call.model_causal and call.n_q != call.n_k:
        raise call.refuse(
            f"{call.n_q} queries and {call.n_k} keys in a non-causal module (cross-attention): a window "
            "over token positions needs queries and keys from the same sequence"
        )


def _mhsa(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
    return softmax_attention(call)


def _window(call: AttentionCall) -> int:
    """The window (keys per side, self excluded) of this call: configured, else the model's own."""
    found = binding(call.module, "sliding_window")
    window = None if found is None else found.settings.window
    own = call.extra.get("sliding_window")  # the layer's own window in keys, self included (Mistral's W)
    if window is None:
        if own is None:
            raise call.refuse(
                "no window: the model has no sliding_window of its own; call attnzoo.integrations.hf."
                "configure(model, 'sliding_window', window=...) first"
            )
        return int(own) - 1
    if own is not None and window > int(own) - 1:
        raise call.refuse(
            f"window={window} exceeds the model's own sliding_window={own}, whose mask already hides keys "
            f"more than {int(own) - 1} positions back; use window <= {int(own) - 1}"
        )
    return window


def _sliding_window(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
    window = _window(call)
    _self_attention(call)
    right = 0 if call.model_causal else window
    if call.bias is None and call.n_q == call.n_k and not call.weights:
        key, value = call.expanded()
        out = sliding_window_attention(
            call.query, key, value, left=window, right=right, scale=call.scaling, dropout_p=call.dropout
        )
        return out, None
    # queries are the last n_q of n_k positions: j - (i + off) in [-left, right]
    off = call.n_k - call.n_q
    return softmax_attention(
        call, band_mask(call.n_q, call.n_k, window - off, right + off, call.query.device)
    )


@functools.lru_cache(maxsize=16)
def _neighbourhoods(n: int, kernel_size: int, dilation: int, causal: bool) -> torch.Tensor:
    return neighborhood_mask((n,), kernel_size, dilation, causal)


def _neighborhood(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
    settings = _configured(call, "neighborhood_attention_1d", "kernel_size=...").settings
    k, d = settings.kernel_size, settings.dilation
    if k * d > call.n_k:
        raise call.refuse(
            f"kernel_size * dilation = {k} * {d} exceeds the {call.n_k} keys: every query needs "
            "kernel_size neighbours"
        )
    _self_attention(call)
    if not call.model_causal and call.bias is not None and bool(hidden_keys(call.bias).any()):
        raise call.refuse(
            "the mask hides keys (padding): non-causal neighbourhood windows are shifted inside the sequence "
            "at its ends, which padding would move; run unpadded batches"
        )
    if call.bias is None and call.n_q == call.n_k and not call.weights:
        key, value = call.expanded()
        out = na1d(
            call.query, key, value, k, d, call.model_causal, scale=call.scaling, dropout_p=call.dropout
        )
        return out, None
    pattern = _neighbourhoods(call.n_k, k, d, call.model_causal).to(call.query.device)
    return softmax_attention(call, pattern[call.n_k - call.n_q :])


def _s2_attention(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
    settings = _configured(call, "s2_attention", "group_size=...").settings
    g, sinks, h = settings.group_size, settings.num_sink, call.heads
    if h % 2:
        raise call.refuse(f"{h} heads: S2 shifts half of the heads, so it needs an even number of heads")
    _self_attention(call)
    if call.bias is not None:
        visible = ~hidden_keys(call.bias)
        after = visible.flip(-1).cumsum(-1).flip(-1) - visible.long()  # visible keys after each key
        if bool((~visible & (after > 0)).any()):
            raise call.refuse(
                "the mask hides keys before visible ones (left padding): S2's groups and sink tokens are "
                "laid on key positions 0, 1, ..., so they would fall on the padding; pad on the right"
            )
    kw = {"group_size": g, "num_sink": sinks, "causal": call.model_causal}
    if call.bias is None and call.n_q == call.n_k and not call.weights and not capturing():
        key, value = call.expanded()
        half = h // 2
        common = {**kw, "scale": call.scaling, "dropout_p": call.dropout}
        plain = grouped_attention(call.query[:, :half], key[:, :half], value[:, :half], **common)
        shifted = grouped_attention(
            call.query[:, half:], key[:, half:], value[:, half:], offset=g // 2, **common
        )
        return torch.cat([plain, shifted], dim=1), None
    device = call.query.device
    masks = [group_mask(call.n_k, offset=offset, device=device, **kw) for offset in (0, g // 2)]
    pattern = torch.stack(masks)[:, call.n_k - call.n_q :].repeat_interleave(h // 2, dim=0)
    return softmax_attention(call, pattern)


def _act(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    state: ACTState = _configured(call, "act", "heads={layer: [head, ...]}").state
    if not state.heads:
        return edited_softmax(call, None)
    return edited_softmax(call, lambda probs, module: state.calibration(probs, state.heads))


def _var(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    state: VARState | None = _configured(call, "var", "image_start=..., image_len=...").state
    if state is None:
        return edited_softmax(call, None)
    sinks = state.sinks
    if sinks is None:
        raise call.refuse(
            "no sink tokens: VAR's pre-hook on the decoder layer owning this module did not run"
        )
    var = state.prefill.var
    return edited_softmax(
        call, lambda probs, module: var.apply(probs, sinks, state.image_start, state.image_len)[1]
    )


def _no_dropout_or_weights(call: AttentionCall, method: str) -> None:
    if call.dropout:
        raise call.refuse(f"{method} applies no attention dropout (dropout={call.dropout}); run model.eval()")
    if call.weights:
        raise call.refuse(
            f"{method} does not form one softmax map over all keys, so output_attentions is not available"
        )


def _pine(call: AttentionCall) -> tuple[torch.Tensor, None]:
    state: PINEState = _configured(call, "pine", "prefix=..., documents=[...]").state
    _no_dropout_or_weights(call, "PINE")
    if call.bias is not None:
        allowed = allowed_keys(call.query, call.key, bias=call.bias)
        expected = causal_mask(call.n_q, call.n_k, device=allowed.device).expand(allowed.shape)
        if not torch.equal(allowed, expected):
            raise call.refuse("PINE needs unpadded prompts: the mask hides keys a causal query would see")
    out = pine_attention_rotated(
        call.query, call.key, call.value, state.layout, state.rotary, scale=call.scaling
    )
    return out, None


def _recycled(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
    state: RecycledAttention = _configured(call, "recycled", "stride=..., top_k=...").state
    _no_dropout_or_weights(call, "Recycled attention")
    return state(call.query, call.key, call.value, bias=call.bias, scale=call.scaling)


_BODIES: dict[str, Body] = {
    "mhsa": _mhsa,
    "sliding_window": _sliding_window,
    "neighborhood_attention_1d": _neighborhood,
    "s2_attention": _s2_attention,
    "act": _act,
    "var": _var,
    "pine": _pine,
    "recycled": _recycled,
}

FUNCTIONS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor | None]]] = {
    PREFIX + name: hf_function(PREFIX + name, body) for name, body in _BODIES.items()
}
"""``{attn_implementation: attention function}`` registered with ``transformers``' ``AttentionInterface``."""
