"""MoH attention: gating equations, load-balance loss, sparse (selected heads only) == dense, and
attention FLOPs that fall with the activated-head ratio."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomise_seeded
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from attnzoo.mechanisms.token_mixer.moh_attention import MoHAttention


def _oracle(m: MoHAttention, x: torch.Tensor) -> torch.Tensor:
    """Float64 MoH written from the equations: every head computed, explicit softmax, loop over tokens."""
    b, n, _ = x.shape
    h, d, s, k = m.num_heads, m.head_dim, m.shared_head, m.routed_head
    qkv = F.linear(x, m.qkv.weight, m.qkv.bias).reshape(b, n, 3, h, d)
    q, kk, v = m.q_norm(qkv[:, :, 0]), m.k_norm(qkv[:, :, 1]), qkv[:, :, 2]
    scores = torch.einsum("bihd,bjhd->bhij", q, kk) * d**-0.5
    if m.causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    heads = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
    gates = torch.zeros(b, n, h, dtype=x.dtype)
    for bi in range(b):
        for t in range(n):
            xt = x[bi, t]
            g_s = (m.shared_router.weight @ xt).softmax(-1) * s if s > 1 else torch.ones(s, dtype=x.dtype)
            if k == 0:
                gates[bi, t] = g_s
                continue
            p = (m.router.weight @ xt).softmax(-1)
            top = p.topk(k).indices
            g_r = torch.zeros_like(p)
            g_r[top] = p[top] / p[top].sum() * k
            if s == 0:
                gates[bi, t] = g_r
            else:
                a = (m.mix_router.weight @ xt).softmax(-1) * 2
                gates[bi, t] = torch.cat([a[0] * g_s, a[1] * g_r])
    mixed = (heads * gates[..., None]).reshape(b, n, h * d)
    return F.linear(mixed, m.proj.weight, m.proj.bias)


CONFIGS = [
    {"num_heads": 4, "shared_head": 2, "routed_head": 1},
    {"num_heads": 6, "shared_head": 1, "routed_head": 3, "qk_norm": True, "qkv_bias": True},
    {"num_heads": 4, "shared_head": 0, "routed_head": 2},
    {"num_heads": 4, "shared_head": 4, "routed_head": 0},
    {"num_heads": 5, "shared_head": 2, "routed_head": 2, "head_dim": 3, "causal": True},
]


def _dim(cfg: dict) -> int:
    return 10 if "head_dim" in cfg else 12


@pytest.mark.parametrize("cfg", CONFIGS)
def test_dense_matches_equation_oracle(cfg: dict) -> None:
    m = MoHAttention(_dim(cfg), **cfg).double().eval()
    randomise_seeded(m)
    x = torch.randn(2, 9, m.dim, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _oracle(m, x), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_sparse_heads_equal_dense_in_float64(cfg: dict) -> None:
    torch.manual_seed(0)
    m = MoHAttention(_dim(cfg), **cfg).double().eval()
    randomise_seeded(m, seed=1)
    x = torch.randn(3, 11, m.dim, dtype=torch.float64, requires_grad=True)
    wrt = [x, *m.parameters()]
    dense = m(x)
    grads_dense = torch.autograd.grad(dense.square().sum(), wrt)
    m.sparse_heads = True
    sparse = m(x)
    grads_sparse = torch.autograd.grad(sparse.square().sum(), wrt)
    torch.testing.assert_close(sparse, dense, atol=1e-12, rtol=1e-10)
    for got, want in zip(grads_sparse, grads_dense):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_sparse_heads_are_causal() -> None:
    m = MoHAttention(12, 4, shared_head=1, routed_head=2, causal=True, sparse_heads=True).double().eval()
    randomise_seeded(m)
    x = torch.randn(1, 10, 12, dtype=torch.float64)
    base = m(x)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    torch.testing.assert_close(m(x2)[:, :6], base[:, :6], atol=1e-12, rtol=1e-10)


def _balanced_moh(shared: int, routed: int, heads: int, dim: int) -> MoHAttention:
    """Router that sends token class c to routed heads {c, c+1, ..., c+k-1} (mod E): every routed
    head is chosen by exactly N k / E tokens when N is a multiple of E."""
    m = MoHAttention(dim, heads, shared_head=shared, routed_head=routed).double().eval()
    randomise_seeded(m)
    e = heads - shared
    with torch.no_grad():
        m.router.weight.zero_()
        for j in range(e):
            for c in range(e):
                m.router.weight[j, c] = 10.0 * 0.5 ** ((j - c) % e)
    return m


def _attention_flops(m: MoHAttention, x: torch.Tensor) -> tuple[int, int]:
    """(attention matmul FLOPs, total FLOPs); the math SDPA backend exposes the attention bmm's."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        m(x)
    counts = counter.get_flop_counts()["Global"]
    return int(counts.get(torch.ops.aten.bmm, 0)), int(counter.get_total_flops())


def test_attention_flops_fall_with_activated_head_ratio() -> None:
    heads, shared, dim, n, b = 8, 2, 32, 48, 2
    e = heads - shared
    x = torch.zeros(b, n, dim, dtype=torch.float64)
    x[:, torch.arange(n), torch.arange(n) % e] = 1.0
    x += 0.01 * torch.randn(b, n, dim, dtype=torch.float64)
    dense_attn = None
    previous_total = 0
    for k in range(1, e + 1):
        m = _balanced_moh(shared, k, heads, dim)
        attn_dense, total_dense = _attention_flops(m, x)
        m.sparse_heads = True
        attn_sparse, total_sparse = _attention_flops(m, x)
        dense_attn = attn_dense if dense_attn is None else dense_attn
        assert attn_dense == dense_attn == b * heads * 4 * n * n * m.head_dim
        # structural: exactly (h_s + k) / h of the dense attention FLOPs
        assert attn_sparse * heads == attn_dense * (shared + k)
        assert total_sparse <= total_dense
        assert total_sparse > previous_total
        previous_total = total_sparse
        assert m.last_gates is not None
        assert int((m.last_gates[..., shared:] > 0).sum(-1).min()) == k


def test_aux_loss_formula_and_gradient() -> None:
    m = MoHAttention(12, 6, shared_head=2, routed_head=2).double().train()
    randomise_seeded(m)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    m(x)
    probs = (x.reshape(-1, 12) @ m.router.weight.T).softmax(-1)
    mask = torch.zeros_like(probs).scatter(-1, probs.topk(2, dim=-1).indices, 1.0)
    want = (probs.mean(0) * mask.mean(0)).mean() * 4 * 4
    assert m.aux_loss is not None
    torch.testing.assert_close(m.aux_loss, want)
    m.aux_loss.backward()
    assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0


def test_aux_loss_of_uniform_router_equals_k() -> None:
    m = MoHAttention(12, 6, shared_head=2, routed_head=3).double()
    with torch.no_grad():
        m.router.weight.zero_()
    m(torch.randn(1, 5, 12, dtype=torch.float64))
    torch.testing.assert_close(m.aux_loss, torch.tensor(3.0, dtype=torch.float64))


def test_all_shared_has_no_aux_loss() -> None:
    m = MoHAttention(8, 4, shared_head=4, routed_head=0)
    m(torch.randn(1, 3, 8))
    assert m.aux_loss is None and m.router is None


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"shared_head": 5}, "shared_head"),
        ({"shared_head": 2, "routed_head": 3}, "routed_head"),
        ({"shared_head": 2, "routed_head": 0}, "routed_head"),
        ({"head_dim": 0}, "head_dim"),
        ({"num_heads": 0}, "num_heads"),
    ],
)
def test_bad_config(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        MoHAttention(8, **{"num_heads": 4, **kwargs})


@pytest.mark.slow
def test_sparse_heads_under_compile() -> None:
    m = MoHAttention(16, 4, shared_head=1, routed_head=2, sparse_heads=True).eval()
    x = torch.randn(2, 9, 16)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m)(x), m(x), atol=1e-5, rtol=1e-4)
