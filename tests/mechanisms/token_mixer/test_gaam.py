"""GAAM: a float64 per-head loop of the paper's equation, normalisation, the eps quirk, padding."""

from __future__ import annotations

import math

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.token_mixer.gaam import GaussianAdaptiveAttention, gaam_head_slices


def _oracle(m: GaussianAdaptiveAttention, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head, per-Gaussian loop on ``x (B, N, C)`` along axis 1 (tokens) or 2 (channels)."""
    dim = 1 if m.axis == "tokens" else 2
    outs, weights = [], []
    for h, (start, length) in enumerate(gaam_head_slices(x.shape[dim], m.num_heads)):
        chunk = x.narrow(dim, start, length)
        mean = chunk.mean(dim, keepdim=True)
        var = chunk.var(dim, keepdim=True) + eps
        g = torch.ones_like(chunk)
        for i in range(m.num_gaussians):
            y = (chunk - mean - m.mean_offsets[h, i]) / var.sqrt()
            c2 = m.c[h, i] ** 2
            g = g * torch.exp(-(y**2) / (2 * c2)) / torch.sqrt(2 * math.pi * c2)
        w = g / g.sum(dim, keepdim=True).clamp(min=eps)
        outs.append(chunk * w)
        weights.append(w)
    return torch.cat(outs, dim), torch.cat(weights, dim)


@pytest.mark.parametrize("axis", ["tokens", "channels"])
@pytest.mark.parametrize("heads,n", [(1, 7), (3, 11), (4, 10)])
def test_matches_equation_loop(axis: str, heads: int, n: int) -> None:
    dim = n if axis == "channels" else 9
    m = GaussianAdaptiveAttention(dim, 3, num_heads=heads, axis=axis, eps=1e-5).double()
    with torch.no_grad():
        m.mean_offsets.normal_(0, 0.3)
    x = torch.randn(2, n if axis == "tokens" else 5, dim, dtype=torch.float64)
    out, w = _oracle(m, x, 1e-5)
    torch.testing.assert_close(m(x), out)
    torch.testing.assert_close(m.weights(x), w)


def test_weights_sum_to_one_per_head_chunk() -> None:
    m = GaussianAdaptiveAttention(6, 2, num_heads=3).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    w = m.weights(x)
    for start, length in gaam_head_slices(11, 3):
        torch.testing.assert_close(w[:, start : start + length].sum(1), torch.ones(2, 6, dtype=torch.float64))


def test_official_head_eps_quirk() -> None:
    torch.manual_seed(0)
    paper = GaussianAdaptiveAttention(4, 2, num_heads=2, eps=0.5).double()
    quirk = GaussianAdaptiveAttention(4, 2, num_heads=2, eps=0.5, official_head_eps=True).double()
    quirk.load_state_dict(paper.state_dict())
    x = torch.randn(1, 8, 4, dtype=torch.float64)
    assert quirk.head_eps == 1e-8 and paper.head_eps == 0.5
    torch.testing.assert_close(quirk(x), _oracle(quirk, x, 1e-8)[0])
    torch.testing.assert_close(paper(x), _oracle(paper, x, 0.5)[0])
    assert not torch.allclose(paper(x), quirk(x))


def test_padding_entries_pass_through() -> None:
    m = GaussianAdaptiveAttention(4, 2, padding_value=0.0).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    x[:, -3:] = 0.0
    x[0, 1, 2] = 0.0
    out = m(x)
    pad = x == 0
    assert torch.equal(out[pad], x[pad])
    assert not torch.allclose(out[~pad], x[~pad])


def test_structure_no_pairwise_tensor_and_parameter_count() -> None:
    m = GaussianAdaptiveAttention(16, 5, num_heads=4)
    assert sum(p.numel() for p in m.parameters()) == 2 * 4 * 5
    n = 64
    sizes: list[int] = []

    def hook(_: object, __: object, out: torch.Tensor) -> None:
        sizes.append(out.numel())

    m.register_forward_hook(hook)
    x = torch.randn(1, n, 16)
    with torch.profiler.profile(profile_memory=True) as prof:
        m(x)
    peak = max(e.cpu_memory_usage for e in prof.key_averages())
    # The largest intermediate is the (N, C, G) density tensor; N x N per channel would be 64x larger.
    assert peak <= 4 * n * 16 * 5 * 4
    assert sizes == [n * 16]


def test_capture_records_gaussian_weights() -> None:
    m = GaussianAdaptiveAttention(8, 3, num_heads=2).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    plain = m(x)
    with attnzoo.capture(m) as cap:
        got = m(x)
    torch.testing.assert_close(got, plain)
    rec = cap[""][0]
    assert rec.kind == "gaussian" and rec.probs.shape == (2, 8, 1, 7)
    torch.testing.assert_close(rec.probs[:, :, 0].transpose(1, 2), m.weights(x))


def test_multi_head_gradcheck_and_bf16() -> None:
    m = GaussianAdaptiveAttention(6, 2, num_heads=2, axis="channels").double()
    x = torch.randn(1, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,), fast_mode=True)
    y = m.bfloat16()(x.detach().bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="axis"):
        GaussianAdaptiveAttention(8, axis="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_heads"):
        GaussianAdaptiveAttention(8, num_heads=0)
    with pytest.raises(ValueError, match="num_heads"):
        GaussianAdaptiveAttention(4, num_heads=3, axis="channels")
    with pytest.raises(ValueError, match="eps"):
        GaussianAdaptiveAttention(4, eps=0.0)
    m = GaussianAdaptiveAttention(4, num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        m(torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="at least 2"):
        m(torch.randn(1, 5, 4))


def test_normaliser_clamp_is_literal_when_densities_underflow() -> None:
    m = GaussianAdaptiveAttention(3, 2, eps=1e-3).double()
    with torch.no_grad():
        m.c.fill_(0.05)
        m.mean_offsets.fill_(3.0)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    w = m.weights(x)
    assert (w.sum(1) < 0.5).any()  # raw densities / eps: the clamp is hit and weights do not sum to 1
    torch.testing.assert_close(w, _oracle(m, x, 1e-3)[1])
