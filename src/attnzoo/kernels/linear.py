"""Linear attention with (optional) gated decay: the recurrence every linear mechanism shares.

Causal form, per batch and head, with state ``S_t: (d_k, d_v)``::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

``q, k: (B, h, N, d_k)``, ``v: (B, h, N, d_v)``, ``log_gate g`` broadcastable to ``(B, h, N, d_k)``
with values <= 0 (``None`` = no decay). A gate whose last dimension is 1 is a *scalar* decay per
token and head (a per-head constant gives Lightning/RetNet-style decay); a gate over ``d_k`` is a
data-dependent per-key gate (GLA). ``initial_state: (B, h, d_k, d_v)``.

Three exact forms of the same function:

* :func:`linear_attention_recurrent`: the naive token-by-token loop (the reference).
* :func:`linear_attention_chunked`: the chunked parallel form. The sequence is cut into chunks of
  ``chunk_size`` tokens; inside a chunk the output is an exact masked "attention" product, and a
  state is carried between chunks (Lightning Attention's intra/inter-block split; the chunked
  GLA of Yang et al. 2023). Decays are cumulative log gates *relative to the chunk*. Inside a
  chunk, ``exp(b_i - b_j)`` is split as ``exp(b_i - r) exp(r - b_j)`` around the chunk's midpoint
  ``r`` whenever both factors stay normal floating-point numbers (any realistic gate: a total log
  decay over the chunk above about -124 in float32, -990 in float64); stronger decays take an
  always-safe form in which every ``exp`` has a non-positive argument: the masked decay matrix for
  scalar decays, and for per-key gates recursive halving, where rows of the second half against
  columns of the first half use the log gate at the split point as reference. Nothing overflows,
  whatever the gate strength, and both forms agree to rounding.
* :func:`linear_attention_step`: one decoding step on an explicit state.

:func:`linear_attention` dispatches to the chunked form; :func:`linear_attention_bidirectional`
is the non-causal (forward + backward scan) form. All forms compute in at least float32 and return
``o`` in the dtype of ``q`` and the state in the compute dtype (float32, or float64 for float64
inputs).

:func:`linear_attention` and :func:`linear_attention_bidirectional` take a ``key_padding_mask (B, N)``
(True = real token): padded tokens get zero keys and values and a zero log gate (no decay), so they
add nothing to any state, sum or normaliser and the kept tokens get exactly the result of the
sequence without them (their own outputs are meaningless).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnzoo.checks import check_tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "SEGMENT_SIZE",
    "broadcast_log_gate",
    "linear_attention",
    "linear_attention_bidirectional",
    "linear_attention_chunked",
    "linear_attention_recurrent",
    "linear_attention_step",
]

#: default chunk length of the chunked form
DEFAULT_CHUNK_SIZE = 64
#: tokens per segment of the chunked form (a multiple of every chunk length up to it)
SEGMENT_SIZE = 2048


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    check_tensor(q, "q", ndim=4, finite=False)
    check_tensor(k, "k", ndim=4, finite=False, shape=q.shape)
    check_tensor(v, "v", ndim=4, finite=False, shape=(*q.shape[:3], None))


def _check_state(state: torch.Tensor | None, b: int, h: int, dk: int, dv: int, name: str) -> None:
    if state is not None:
        check_tensor(state, name, ndim=4, finite=False, shape=(b, h, dk, dv))


def broadcast_log_gate(
    log_gate: torch.Tensor, b: int, h: int, n: int, dk: int, *, note: str = ""
) -> torch.Tensor:
    """Validate ``log_gate`` and broadcast it to ``(B, h, N, 1)`` (scalar decay) or ``(B, h, N, d_k)``.

    A last dimension of 1 (or a 0-d gate) is a scalar decay per token and head, any other must be
    ``d_k`` (a per-key gate). ``note`` is added to the error message (e.g. what ``N`` stands for).
    The dtype is unchanged. Raises ``ValueError`` for a gate that does not broadcast.
    """
    check_tensor(log_gate, "log_gate", finite=False, nonempty=False)
    if log_gate.dim() > 4:
        raise ValueError(f"log_gate must broadcast to {(b, h, n, dk)}, got shape {tuple(log_gate.shape)}")
    width = log_gate.shape[-1] if log_gate.dim() else 1
    try:
        return torch.broadcast_to(log_gate, (b, h, n, 1 if width == 1 else dk))
    except RuntimeError as err:
        raise ValueError(
            f"log_gate must broadcast to {(b, h, n, dk)} or {(b, h, n, 1)}{note}, "
            f"got shape {tuple(log_gate.shape)}"
        ) from err


def _gate(
    log_gate: torch.Tensor | None, b: int, h: int, n: int, dk: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """``log_gate`` broadcast to ``(B, h, N, 1)`` (scalar decay) or ``(B, h, N, d_k)`` (per key)."""
    return None if log_gate is None else broadcast_log_gate(log_gate, b, h, n, dk).to(dtype)


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
    _check_qkv(q, k, v)
    b, h, n, dk = q.shape
    dv = v.shape[-1]
    _check_state(initial_state, b, h, dk, dv, "initial_state")
    dtype = _compute_dtype(q.dtype)
    state = initial_state.to(dtype) if initial_state is not None else q.new_zeros(b, h, dk, dv, dtype=dtype)
    gate = _gate(log_gate, b, h, n, dk, dtype)
    decay = None if gate is None else gate.exp()
    outs = []
    for t in range(n):
        if decay is not None:
            state = state * decay[:, :, t, :, None]
        state = state + k[:, :, t, :, None].to(dtype) * v[:, :, t, None, :].to(dtype)
        outs.append(scale * (q[:, :, t, None, :].to(dtype) @ state).squeeze(-2))
    o = torch.stack(outs, dim=2) if outs else q.new_zeros(b, h, 0, dv, dtype=dtype)
    return o.to(q.dtype), state


def linear_attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: torch.Tensor | None,
    log_gate_t: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step: ``S = diag(exp(g_t)) S + k_t^T v_t`` and ``o_t = scale * q_t S``.

    Args:
        q_t, k_t: ``(B, h, d_k)``; v_t: ``(B, h, d_v)``.
        state: ``(B, h, d_k, d_v)``, or ``None`` for the zero state (first token).
        log_gate_t: broadcastable to ``(B, h, d_k)`` (``(B, h, 1)`` for a scalar decay), or ``None``.
        scale: output scale.

    Returns ``(o_t (B, h, d_v), new_state (B, h, d_k, d_v))``; the state is kept in the compute
    dtype (at least float32) so that long decodes do not accumulate low-precision rounding.
    """
    check_tensor(q_t, "q_t", ndim=3, finite=False)
    check_tensor(k_t, "k_t", ndim=3, finite=False, shape=q_t.shape)
    check_tensor(v_t, "v_t", ndim=3, finite=False, shape=(*q_t.shape[:2], None))
    b, h, dk = q_t.shape
    dv = v_t.shape[-1]
    _check_state(state, b, h, dk, dv, "state")
    dtype = _compute_dtype(q_t.dtype)
    if state is not None:
        dtype = torch.promote_types(dtype, state.dtype)
    new = k_t.to(dtype)[..., :, None] * v_t.to(dtype)[..., None, :]
    if state is not None:
        state = state.to(dtype)
        if log_gate_t is not None:
            check_tensor(log_gate_t, "log_gate_t", finite=False, nonempty=False)
            state = state * log_gate_t.to(dtype).exp().broadcast_to(b, h, dk)[..., None]
        new = state + new
    o = scale * (q_t.to(dtype)[..., None, :] @ new).squeeze(-2)
    return o.to(q_t.dtype), new


def _pad_chunks(x: torch.Tensor, n_pad: int, chunk: int) -> torch.Tensor:
    """``(B, h, N, d) -> (B, h, N_c, chunk, d)`` with zero padding at the end."""
    if n_pad:
        x = F.pad(x, (0, 0, 0, n_pad))
    b, h, n, d = x.shape
    return x.reshape(b, h, n // chunk, chunk, d)


def _intra_per_key(q: torch.Tensor, k: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """Causal intra-chunk scores ``A_ij = sum_d q_id k_jd exp(b_id - b_jd)`` (j <= i), per-key gates.

    Built by recursive halving (the chunk length is a power of two): at every level the
    off-diagonal block (second half x first half) uses the cumulative log gate ``r`` at the last
    position of the first half as its reference, so ``exp(b_i - r) <= 1`` and ``exp(r - b_j) <= 1``.
    The blocks are assembled bottom-up without in-place writes into views, so that the ONNX
    exporter's functionalisation accepts the traced graph.
    """
    lead, c, d = q.shape[:-2], q.shape[-2], q.shape[-1]
    scores = (q * k).sum(-1)[..., None, None]  # (..., c, 1, 1) diagonal blocks, j = i: exp(0) = 1
    m = 1
    while m < c:
        nb = c // (2 * m)
        qh = q.reshape(*lead, nb, 2, m, d)[..., 1, :, :]
        kh = k.reshape(*lead, nb, 2, m, d)[..., 0, :, :]
        bh = cum.reshape(*lead, nb, 2, m, d)
        ref = bh[..., 0, m - 1 :, :]
        off = (qh * (bh[..., 1, :, :] - ref).exp()) @ (kh * (ref - bh[..., 0, :, :]).exp()).transpose(-1, -2)
        pairs = scores.reshape(*lead, nb, 2, m, m)
        top = torch.cat([pairs[..., 0, :, :], torch.zeros_like(off)], dim=-1)
        bottom = torch.cat([off, pairs[..., 1, :, :]], dim=-1)
        scores = torch.cat([top, bottom], dim=-2)  # (..., nb, 2m, 2m)
        m *= 2
    return scores.reshape(*lead, c, c)


def _exp_range(dtype: torch.dtype) -> float:
    """Largest ``|x|`` for which ``exp(x)`` and ``exp(-x)`` are normal numbers with room to spare."""
    return 0.7 * math.log(torch.finfo(dtype).max)


def _chunk_factors(
    qc: torch.Tensor, kc: torch.Tensor, cum: torch.Tensor, per_key: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intra-chunk scores, ``q_i exp(b_i)`` and ``k_j exp(b_last - b_j)`` for chunked log decays ``cum``.

    When every chunk's total log decay lies within ``2 * _exp_range``, one reference per chunk and
    key, the midpoint ``r = b_last / 2``, keeps ``exp(b_i - r)`` and ``exp(r - b_j)`` normal numbers:
    the scores are then one matmul of rescaled ``q`` and ``k`` (each term exact to rounding) and one
    ``exp`` per element suffices. Stronger decays (or tracing under ``torch.compile``) take the
    always-safe forms: the masked decay matrix (scalar decay) or recursive halving (per-key gates),
    whose exponents are all <= 0. Both give the same result to rounding.
    """
    total = cum[..., -1:, :]
    limit = _exp_range(cum.dtype)
    if not torch.compiler.is_compiling() and bool(total.min() >= -2 * limit):
        ref = total / 2
        rel = cum - ref  # b_i - r in [-limit, limit]; two exps (not 1 / exp) keep backward in range too
        q_rel, k_rel = qc * rel.exp(), kc * (-rel).exp()
        scores = (q_rel @ k_rel.transpose(-1, -2)).tril_()  # also drops the overflowing j > i entries
        return scores, q_rel * ref.exp(), k_rel * (total - ref).exp()
    if per_key:
        scores = _intra_per_key(qc, kc, cum)
    else:
        c = qc.shape[-2]
        lower = torch.ones(c, c, dtype=torch.bool, device=qc.device).tril()
        diff = cum - cum.transpose(-1, -2)  # b_i - b_j: <= 0 on and below the diagonal
        scores = (qc @ kc.transpose(-1, -2)) * diff.masked_fill(~lower, float("-inf")).exp()
    return scores, qc * cum.exp(), kc * (total - cum).exp()


def _chunked_segment(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate: torch.Tensor | None,
    state: torch.Tensor,
    scale: float,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked form on one segment (inputs already in the compute dtype), from ``state``."""
    b, h, n, dv = v.shape
    chunk = min(chunk_size, 1 << max(n - 1, 0).bit_length())
    n_pad = -n % chunk
    qc, kc, vc = (_pad_chunks(t, n_pad, chunk) for t in (q, k, v))
    if gate is None:
        scores = (qc @ kc.transpose(-1, -2)).tril_()
        q_in, k_out, decay = qc, kc, None
    else:
        cum = _pad_chunks(gate, n_pad, chunk).cumsum(dim=-2)  # log decay from the chunk start, <= 0
        scores, q_in, k_out = _chunk_factors(qc, kc, cum, per_key=gate.shape[-1] > 1)
        decay = cum[..., -1:, :].transpose(-1, -2).exp().contiguous()  # (B, h, N_c, d_k or 1, 1)
    local = k_out.transpose(-1, -2) @ vc  # (B, h, N_c, d_k, d_v): each chunk's own contribution
    entering = []  # state entering each chunk
    for c in range(local.shape[2]):
        entering.append(state)
        state = (
            local[:, :, c] + state if decay is None else torch.addcmul(local[:, :, c], state, decay[:, :, c])
        )
    inter = q_in @ torch.stack(entering, dim=2)
    o = torch.baddbmm(inter.flatten(0, 2), scores.flatten(0, 2), vc.flatten(0, 2), beta=scale, alpha=scale)
    return o.reshape(b, h, n + n_pad, dv)[:, :, :n], state


def linear_attention_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    log_gate: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked parallel form; same contract and result as :func:`linear_attention_recurrent`.

    ``chunk_size`` must be a power of two; ``N`` need not be a multiple of it (the last chunk is
    zero-padded with zero log gates, which leaves outputs and the final state unchanged). Log
    gates must be finite (``<= 0``); any strength is handled without overflow. Long sequences
    run in segments of :data:`SEGMENT_SIZE` tokens (the state carried across), which keeps the
    working set, and so the time per token, independent of ``N``.
    """
    _check_qkv(q, k, v)
    if not isinstance(chunk_size, int) or chunk_size <= 0 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size!r}")
    b, h, n, dk = q.shape
    dv = v.shape[-1]
    _check_state(initial_state, b, h, dk, dv, "initial_state")
    dtype = _compute_dtype(q.dtype)
    gate = _gate(log_gate, b, h, n, dk, dtype)
    out_dtype = q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    state = initial_state.to(dtype) if initial_state is not None else q.new_zeros(b, h, dk, dv)
    segment = max(SEGMENT_SIZE, chunk_size)
    outs = []
    for start in range(0, n, segment):
        part = slice(start, start + segment)
        # one copy per input when segmenting, not one per matmul reading the strided slice
        qs, ks, vs = (t[:, :, part].contiguous() for t in (q, k, v))
        gs = None if gate is None else gate[:, :, part].contiguous()
        o, state = _chunked_segment(qs, ks, vs, gs, state, scale, chunk_size)
        outs.append(o)
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return o.to(out_dtype), state


def _drop_padding(
    key_padding_mask: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gate: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``k``, ``v`` zeroed and ``log_gate`` set to 0 where ``key_padding_mask (B, N)`` is False."""
    if key_padding_mask is None:
        return k, v, log_gate
    b, h, n, dk = k.shape
    check_tensor(key_padding_mask, "key_padding_mask", floating=False, finite=False, shape=(b, n))
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor, got dtype {key_padding_mask.dtype}")
    pad = ~key_padding_mask[:, None, :, None]
    if log_gate is not None:
        log_gate = broadcast_log_gate(log_gate, b, h, n, dk).masked_fill(pad, 0.0)
    return k.masked_fill(pad, 0.0), v.masked_fill(pad, 0.0), log_gate


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    log_gate: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (gated) linear attention; same contract as :func:`linear_attention_recurrent`.

    Runs the chunked form (:func:`linear_attention_chunked`): O(N C d_k + N d_k d_v) time for
    chunk size C, exact to float64 precision against the recurrence. ``key_padding_mask (B, N)``
    (True = real token) removes the padded tokens (see the module docstring); the final state is
    then the state after the last kept token.
    """
    _check_qkv(q, k, v)
    k, v, log_gate = _drop_padding(key_padding_mask, k, v, log_gate)
    return linear_attention_chunked(
        q, k, v, log_gate=log_gate, initial_state=initial_state, scale=scale, chunk_size=chunk_size
    )


def linear_attention_bidirectional(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    log_gate: torch.Tensor | None = None,
    reverse_log_gate: torch.Tensor | None = None,
    scale: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Non-causal linear attention: every query reads every key, each key counted once.

    ``o_i = scale * q_i [sum_{j<=i} D^f_{ij} k_j^T v_j + sum_{j>i} D^b_{ij} k_j^T v_j]`` where
    ``D^f_{ij} = diag(exp(g_{j+1} + ... + g_i))`` is the forward scan's decay (``log_gate``) and
    ``D^b_{ij} = diag(exp(g'_i + ... + g'_{j-1}))`` the backward scan's (``reverse_log_gate``,
    applied as in the recurrence run from the last token: ``S'_t = diag(exp(g'_t)) S'_{t+1} +
    k_t^T v_t``; it defaults to ``log_gate``). Without gates this is ``scale * q (K^T V)`` in
    O(N d_k d_v). Mechanisms that count the current token in both directions (ViG) add
    ``scale * (q_i . k_i) v_i`` themselves. ``key_padding_mask (B, N)`` (True = real token) removes
    the padded tokens from every sum (see the module docstring). Returns ``o (B, h, N, d_v)`` in the
    dtype of ``q``.
    """
    _check_qkv(q, k, v)
    k, v, log_gate = _drop_padding(key_padding_mask, k, v, log_gate)
    if reverse_log_gate is not None:
        _, _, reverse_log_gate = _drop_padding(key_padding_mask, k, v, reverse_log_gate)
    dtype = _compute_dtype(q.dtype)
    if log_gate is None and reverse_log_gate is None:
        qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
        return (scale * (qf @ (kf.transpose(-1, -2) @ vf))).to(q.dtype)
    if reverse_log_gate is None:
        reverse_log_gate = log_gate
    b, h, n, dk = q.shape
    fwd_gate = _gate(log_gate, b, h, n, dk, dtype)
    rev_gate = _gate(reverse_log_gate, b, h, n, dk, dtype)
    fwd, _ = linear_attention_chunked(q, k, v, log_gate=fwd_gate, scale=scale, chunk_size=chunk_size)
    flip = (2,)
    rev, _ = linear_attention_chunked(
        q.flip(flip),
        k.flip(flip),
        v.flip(flip),
        log_gate=None if rev_gate is None else rev_gate.flip(flip),
        scale=scale,
        chunk_size=chunk_size,
    )
    qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
    diagonal = scale * (qf * kf).sum(-1, keepdim=True) * vf
    return (fwd.to(dtype) + rev.flip(flip).to(dtype) - diagonal).to(q.dtype)
