"""The three forms of kernels.linear (recurrent, chunked, step) agree in float64: outputs, final
states and gradients, with every gate kind, lengths that are not multiples of the chunk, and an
initial state; the bidirectional form matches an explicit O(N^2) sum; strong gates stay finite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.kernels import linear as linear_module
from attnzoo.kernels.linear import (
    linear_attention,
    linear_attention_bidirectional,
    linear_attention_chunked,
    linear_attention_recurrent,
    linear_attention_step,
)

B, H, DK, DV = 2, 3, 5, 4


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qkv(n: int, g: torch.Generator, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(B, H, n, d, generator=g, dtype=dtype) for d in (DK, DK, DV))


def _log_gate(
    kind: str, n: int, g: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "head":
        return -torch.rand(H, 1, 1, generator=g, dtype=dtype)
    if kind == "scalar":
        return F.logsigmoid(torch.randn(B, H, n, 1, generator=g, dtype=dtype))
    return F.logsigmoid(2 * torch.randn(B, H, n, DK, generator=g, dtype=dtype))


def _explicit(q, k, v, fwd_gate, rev_gate, scale, bidirectional):
    """O(N^2) sum over (i, j) with the decays written out token by token."""
    n = q.shape[2]
    fg = torch.zeros(B, H, n, DK, dtype=q.dtype) if fwd_gate is None else fwd_gate.broadcast_to(B, H, n, DK)
    rg = torch.zeros(B, H, n, DK, dtype=q.dtype) if rev_gate is None else rev_gate.broadcast_to(B, H, n, DK)
    out = torch.zeros(B, H, n, DV, dtype=q.dtype)
    for i in range(n):
        for j in range(n):
            if j <= i:
                decay = fg[:, :, j + 1 : i + 1].sum(2).exp()
            elif bidirectional:
                decay = rg[:, :, i:j].sum(2).exp()
            else:
                continue
            w = (q[:, :, i] * k[:, :, j] * decay).sum(-1, keepdim=True)
            out[:, :, i] += scale * w * v[:, :, j]
    return out


GATES = ["none", "head", "scalar", "key"]


@pytest.mark.parametrize("kind", GATES)
def test_recurrent_matches_explicit_sum(kind: str) -> None:
    g = _gen(1)
    q, k, v = _qkv(9, g)
    gate = _log_gate(kind, 9, g)
    o, _ = linear_attention_recurrent(q, k, v, log_gate=gate, scale=0.7)
    torch.testing.assert_close(o, _explicit(q, k, v, gate, None, 0.7, False), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize("n", [1, 7, 16, 37])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("chunk_size", [4, 16])
def test_chunked_matches_recurrent(kind: str, n: int, with_state: bool, chunk_size: int) -> None:
    g = _gen(2)
    q, k, v = _qkv(n, g)
    gate = _log_gate(kind, n, g)
    s0 = torch.randn(B, H, DK, DV, generator=g, dtype=torch.float64) if with_state else None
    inputs = [t for t in (q, k, v, gate, s0) if t is not None]
    for t in inputs:
        t.requires_grad_(True)
    o_ref, s_ref = linear_attention_recurrent(q, k, v, log_gate=gate, initial_state=s0, scale=0.5)
    o, s = linear_attention_chunked(
        q, k, v, log_gate=gate, initial_state=s0, scale=0.5, chunk_size=chunk_size
    )
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-10)
    w_o = torch.randn(o.shape, generator=g, dtype=torch.float64)
    w_s = torch.randn(s.shape, generator=g, dtype=torch.float64)
    grads_ref = torch.autograd.grad((o_ref * w_o).sum() + (s_ref * w_s).sum(), inputs)
    grads = torch.autograd.grad((o * w_o).sum() + (s * w_s).sum(), inputs)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("kind", GATES)
def test_segments_carry_the_state(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Long inputs run segment by segment; shrink the segment to exercise it on a short input."""
    monkeypatch.setattr(linear_module, "SEGMENT_SIZE", 8)
    g = _gen(12)
    q, k, v = _qkv(45, g)
    gate = _log_gate(kind, 45, g)
    s0 = torch.randn(B, H, DK, DV, generator=g, dtype=torch.float64)
    o_ref, s_ref = linear_attention_recurrent(q, k, v, log_gate=gate, initial_state=s0)
    o, s = linear_attention_chunked(q, k, v, log_gate=gate, initial_state=s0, chunk_size=4)
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-10)


def test_dispatcher_is_chunked_and_default_scale() -> None:
    g = _gen(3)
    q, k, v = _qkv(20, g)
    gate = _log_gate("key", 20, g)
    o, s = linear_attention(q, k, v, log_gate=gate)
    o_ref, s_ref = linear_attention_recurrent(q, k, v, log_gate=gate)
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", GATES)
def test_step_matches_recurrent(kind: str) -> None:
    g = _gen(4)
    n = 6
    q, k, v = _qkv(n, g)
    gate = _log_gate(kind, n, g)
    s0 = torch.randn(B, H, DK, DV, generator=g, dtype=torch.float64)
    o_ref, s_ref = linear_attention_recurrent(q, k, v, log_gate=gate, initial_state=s0, scale=0.3)
    full = None if gate is None else gate.broadcast_to(B, H, n, gate.shape[-1])
    state = s0
    outs = []
    for t in range(n):
        o_t, state = linear_attention_step(
            q[:, :, t], k[:, :, t], v[:, :, t], state, None if full is None else full[:, :, t], scale=0.3
        )
        outs.append(o_t)
    torch.testing.assert_close(torch.stack(outs, 2), o_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(state, s_ref, atol=1e-12, rtol=1e-10)


def test_step_from_zero_state() -> None:
    g = _gen(5)
    q, k, v = _qkv(1, g)
    o_ref, s_ref = linear_attention_recurrent(q, k, v)
    o, s = linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], None)
    torch.testing.assert_close(o, o_ref[:, :, 0])
    torch.testing.assert_close(s, s_ref)


@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize("separate_reverse", [False, True])
def test_bidirectional_matches_explicit_sum(kind: str, separate_reverse: bool) -> None:
    g = _gen(6)
    n = 11
    q, k, v = _qkv(n, g)
    gate = _log_gate(kind, n, g)
    rev = _log_gate(kind, n, g) if separate_reverse else None
    o = linear_attention_bidirectional(q, k, v, log_gate=gate, reverse_log_gate=rev, scale=0.4, chunk_size=4)
    want = _explicit(q, k, v, gate, gate if rev is None else rev, 0.4, True)
    torch.testing.assert_close(o, want, atol=1e-12, rtol=1e-10)


def test_strong_gates_are_finite_and_exact() -> None:
    """Gates of -10 per step (and -1000 on some keys) would overflow exp(-cumsum) in fp32."""
    g = _gen(7)
    n = 300
    q, k, v = _qkv(n, g, torch.float32)
    gate = torch.full((B, H, n, DK), -10.0)
    gate[..., ::2] = -0.01
    gate[:, :, ::7, 1] = -1000.0
    for kind_gate in (gate, gate[..., :1]):
        o, s = linear_attention_chunked(q, k, v, log_gate=kind_gate, chunk_size=64)
        o_ref, s_ref = linear_attention_recurrent(
            q.double(), k.double(), v.double(), log_gate=kind_gate.double()
        )
        assert torch.isfinite(o).all() and torch.isfinite(s).all()
        torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(s.double(), s_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("width", [1, DK])
def test_fast_path_at_its_range_limit_fp32(width: int) -> None:
    """Chunk decays just inside the float32 midpoint range (-121.6 of -124): masked scores overflow
    (and meet zero-padded keys) but are dropped; outputs and gradients stay finite and exact."""
    g = _gen(13)
    n = 100
    q, k, v = _qkv(n, g, torch.float32)
    gate = torch.full((B, H, n, width), -1.9, requires_grad=True)
    for t in (q, k, v):
        t.requires_grad_(True)
    o, s = linear_attention_chunked(q, k, v, log_gate=gate, chunk_size=64)
    o_ref, s_ref = linear_attention_recurrent(q.double(), k.double(), v.double(), log_gate=gate.double())
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, atol=1e-4, rtol=1e-4)
    (o.sum() + s.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, gate))


@pytest.mark.parametrize("per_key", [False, True])
def test_extreme_gates_take_the_safe_path_float64(per_key: bool) -> None:
    """Chunk decays beyond the float64 midpoint range (-990) use the always-safe intra-chunk form."""
    g = _gen(11)
    n = 37
    q, k, v = _qkv(n, g)
    width = DK if per_key else 1
    gate = F.logsigmoid(torch.randn(B, H, n, width, generator=g, dtype=torch.float64))
    gate = gate - 400.0 * (torch.rand(B, H, n, width, generator=g) < 0.3)
    s0 = torch.randn(B, H, DK, DV, generator=g, dtype=torch.float64)
    inputs = [q, k, v, gate, s0]
    for t in inputs:
        t.requires_grad_(True)
    o_ref, s_ref = linear_attention_recurrent(q, k, v, log_gate=gate, initial_state=s0)
    o, s = linear_attention_chunked(q, k, v, log_gate=gate, initial_state=s0, chunk_size=16)
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-10)
    w = torch.randn(o.shape, generator=g, dtype=torch.float64)
    grads_ref = torch.autograd.grad((o_ref * w).sum() + s_ref.sum(), inputs)
    grads = torch.autograd.grad((o * w).sum() + s.sum(), inputs)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-9)


@pytest.mark.slow
def test_long_sequence_strong_decay_fp32() -> None:
    g = _gen(8)
    n = 16384
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for _ in range(3))
    gate = F.logsigmoid(4 * torch.randn(1, 2, n, 8, generator=g)) - 2.0
    no_decay = torch.zeros(1, 2, n, 1)
    for log_gate in (gate, gate[..., :1], no_decay, None):
        o, s = linear_attention(q, k, v, log_gate=log_gate)
        assert torch.isfinite(o).all() and torch.isfinite(s).all()
    o, s = linear_attention(q, k, v, log_gate=gate)
    o_ref, s_ref = linear_attention_recurrent(q.double(), k.double(), v.double(), log_gate=gate.double())
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, atol=1e-4, rtol=1e-4)


def test_low_precision_inputs_keep_dtype() -> None:
    g = _gen(9)
    q, k, v = _qkv(10, g, torch.bfloat16)
    gate = _log_gate("key", 10, g, torch.bfloat16)
    o, s = linear_attention(q, k, v, log_gate=gate)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    o_ref, _ = linear_attention_recurrent(q.double(), k.double(), v.double(), log_gate=gate.double())
    torch.testing.assert_close(o.double(), o_ref, atol=5e-2, rtol=5e-2)


def test_bad_arguments_name_the_argument() -> None:
    g = _gen(10)
    q, k, v = _qkv(5, g)
    with pytest.raises(ValueError, match="k"):
        linear_attention(q, k[:, :, :4], v)
    with pytest.raises(ValueError, match="v"):
        linear_attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="log_gate"):
        linear_attention(q, k, v, log_gate=torch.zeros(B, H, 5, DK + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="initial_state"):
        linear_attention(q, k, v, initial_state=torch.zeros(B, H, DK, DV + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, k, v, chunk_size=12)
    with pytest.raises(TypeError, match="q"):
        linear_attention(q.long(), k, v)
    with pytest.raises(ValueError, match="state"):
        linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], torch.zeros(B, H, DK, 1))


# ------------------------------------------------ flash-linear-attention's naive references (oracle)


def _fla_inputs(n: int, g: torch.Generator, width: int) -> tuple[torch.Tensor, ...]:
    """float32 draws (fla's naive code runs in float32); fla takes (B, T, H, K) layouts."""
    q, k, v = (torch.randn(B, H, n, d, generator=g) for d in (DK, DK, DV))
    gate = F.logsigmoid(2 * torch.randn(B, H, n, width, generator=g))
    s0 = torch.randn(B, H, DK, DV, generator=g)
    return q, k, v, gate, s0


def _btd(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).contiguous()


@pytest.mark.oracle
def test_fla_naive_recurrent_gla() -> None:
    naive = pytest.importorskip("fla.ops.gla.naive")
    g = _gen(20)
    q, k, v, gate, s0 = _fla_inputs(77, g, DK)
    o_fla, s_fla = naive.naive_recurrent_gla(
        _btd(q), _btd(k), _btd(v), _btd(gate), s0, output_final_state=True
    )
    o, s = linear_attention(
        q.double(), k.double(), v.double(), log_gate=gate.double(), initial_state=s0.double(), scale=DK**-0.5
    )
    torch.testing.assert_close(o, o_fla.transpose(1, 2).double(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s, s_fla.double(), atol=1e-4, rtol=1e-4)


@pytest.mark.oracle
def test_fla_naive_recurrent_simple_gla() -> None:
    naive = pytest.importorskip("fla.ops.simple_gla.naive")
    g = _gen(21)
    q, k, v, gate, s0 = _fla_inputs(70, g, 1)
    o_fla, s_fla = naive.naive_recurrent_simple_gla(
        _btd(q), _btd(k), _btd(v), _btd(gate[..., 0]), scale=0.3, initial_state=s0
    )
    o, s = linear_attention(
        q.double(), k.double(), v.double(), log_gate=gate.double(), initial_state=s0.double(), scale=0.3
    )
    torch.testing.assert_close(o, o_fla.transpose(1, 2).double(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s, s_fla.double(), atol=1e-4, rtol=1e-4)


@pytest.mark.oracle
def test_fla_naive_recurrent_linear_attn() -> None:
    naive = pytest.importorskip("fla.ops.linear_attn.naive")
    g = _gen(22)
    q, k, v, _, s0 = _fla_inputs(66, g, 1)
    o_fla, s_fla = naive.naive_recurrent_linear_attn(
        _btd(q), _btd(k), _btd(v), initial_state=s0, output_final_state=True
    )
    o, s = linear_attention(q.double(), k.double(), v.double(), initial_state=s0.double(), scale=DK**-0.5)
    torch.testing.assert_close(o, o_fla.transpose(1, 2).double(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s, s_fla.double(), atol=1e-4, rtol=1e-4)
