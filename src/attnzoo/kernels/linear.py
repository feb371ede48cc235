"""Linear attention with (optional) gated decay: the recurrence every linear mechanism shares.

Causal form, per batch and head, with state ``S_t: (d_k, d_v)``::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

``q, k: (B, h, N, d_k)``, ``v: (B, h, N, d_v)``, ``log_gate g`` broadcastable to ``(B, h, N, d_k)``
with values <= 0 (``None`` = no decay; a per-head constant gives Lightning/RetNet-style decay,
a per-token per-key gate gives GLA). ``initial_state: (B, h, d_k, d_v)``.

:func:`linear_attention_recurrent` is the naive reference (a Python loop over tokens, float64
in tests); the public :func:`linear_attention` dispatches to the fastest exact form.
"""

from __future__ import annotations

import torch

__all__ = ["linear_attention", "linear_attention_recurrent"]


def linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    log_gate: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence. Returns ``(o (B, h, N, d_v), final_state (B, h, d_k, d_v))``."""
    b, h, n, dk = q.shape
    dv = v.shape[-1]
    dtype = torch.promote_types(q.dtype, torch.float32)
    state = (
        initial_state.to(dtype)
        if initial_state is not None
        else q.new_zeros(b, h, dk, dv, dtype=dtype)
    )
    gate = None if log_gate is None else torch.broadcast_to(log_gate, (b, h, n, dk)).to(dtype).exp()
    outs = []
    for t in range(n):
        if gate is not None:
            state = state * gate[:, :, t, :, None]
        state = state + k[:, :, t, :, None].to(dtype) * v[:, :, t, None, :].to(dtype)
        outs.append(scale * (q[:, :, t, None, :].to(dtype) @ state).squeeze(-2))
    o = torch.stack(outs, dim=2) if outs else q.new_zeros(b, h, 0, dv, dtype=dtype)
    return o.to(q.dtype), state


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    log_gate: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (gated) linear attention; same contract as :func:`linear_attention_recurrent`."""
    return linear_attention_recurrent(q, k, v, log_gate=log_gate, initial_state=initial_state, scale=scale)
