"""The SDPA path of kernels.attention agrees with the naive float64 reference; captures carry the mask."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.kernels import attention, attention_reference, causal_mask, merge_heads, split_heads
from attnzoo.kernels.attention import allowed_keys


def _qkv(
    b: int = 2, h: int = 3, nq: int = 7, nk: int = 9, d: int = 5, dv: int = 4
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(*shape, generator=g, dtype=torch.float64)
        for shape in ((b, h, nq, d), (b, h, nk, d), (b, h, nk, dv))
    )


def _explicit(q, k, v, keep: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                s = torch.stack(
                    [scale * (q[b, h, i] @ k[b, h, j]) + bias[b, h, i, j] for j in range(k.shape[2])]
                )
                s = torch.where(keep[b, h, i], s, torch.tensor(float("-inf"), dtype=q.dtype))
                p = torch.exp(s - s.max())
                out[b, h, i] = (p / p.sum()) @ v[b, h]
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("use_bias", [False, True])
def test_sdpa_matches_reference(causal: bool, use_mask: bool, use_bias: bool) -> None:
    q, k, v = _qkv()
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 1, 7, 9, generator=g) > 0.3 if use_mask else None
    if mask is not None:
        mask[..., -1] = True  # every row keeps a key, also under the causal mask
    bias = torch.randn(1, 3, 7, 9, generator=g, dtype=torch.float64) if use_bias else None
    kw = dict(mask=mask, bias=bias, causal=causal, scale=0.37)
    fast = attention(q, k, v, **kw)
    ref = attention_reference(q, k, v, **kw)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-10)
    keep = torch.ones(2, 3, 7, 9, dtype=torch.bool)
    if mask is not None:
        keep &= mask
    if causal:
        keep &= causal_mask(7, 9)
    full_bias = torch.zeros(2, 3, 7, 9, dtype=torch.float64) if bias is None else bias.expand(2, 3, 7, 9)
    torch.testing.assert_close(ref, _explicit(q, k, v, keep, full_bias, 0.37), atol=1e-12, rtol=1e-10)


def test_default_scale_and_causal_fast_path() -> None:
    q, k, v = _qkv(nq=6, nk=6)
    fast = attention(q, k, v, causal=True)
    ref = attention_reference(q, k, v, mask=causal_mask(6, 6))
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-10)


def test_reference_returns_weights_that_sum_to_one() -> None:
    q, k, v = _qkv()
    out, probs = attention_reference(q, k, v, return_weights=True)
    assert probs.shape == (2, 3, 7, 9)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 7, dtype=torch.float64))
    torch.testing.assert_close(out, probs @ v)


def test_causal_mask_aligns_queries_to_last_keys() -> None:
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_split_merge_heads_round_trip() -> None:
    x = torch.randn(2, 5, 12)
    assert split_heads(x, 3).shape == (2, 3, 5, 4)
    assert torch.equal(merge_heads(split_heads(x, 3)), x)


def test_gradients_match_reference() -> None:
    q, k, v = (t.requires_grad_(True) for t in _qkv())
    bias = torch.randn(1, 3, 7, 9, dtype=torch.float64)
    grads_fast = torch.autograd.grad(attention(q, k, v, bias=bias).sum(), (q, k, v))
    grads_ref = torch.autograd.grad(attention_reference(q, k, v, bias=bias).sum(), (q, k, v))
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_capture_records_the_allowed_keys() -> None:
    q, k, v = _qkv()
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(2, 1, 7, 9, generator=g) > 0.3
    mask[..., -1] = True
    bias = torch.randn(1, 3, 7, 9, generator=g, dtype=torch.float64)
    bias[..., 0] = torch.finfo(torch.float64).min  # a transformers additive mask hides key 0
    bias[..., 1] = float("-inf")
    bias[..., 2] = -50.0  # a large negative bias still allows key 2
    hidden_by_bias = torch.ones(1, 3, 7, 9, dtype=torch.bool)
    hidden_by_bias[..., :2] = False
    with attnzoo.capture() as cap:
        attention(q, k, v, mask=mask, causal=True)
        attention_reference(q, k, v, bias=bias)
        attention(q, k, v, mask=mask, bias=bias)
        attention(q, k, v)
    masked, biased, both, plain = cap.records
    assert torch.equal(masked.mask, mask & causal_mask(7, 9))
    assert torch.equal(biased.mask, hidden_by_bias)
    assert torch.equal(both.mask, mask & hidden_by_bias)
    assert plain.mask is None
    for rec in (masked, biased, both):
        assert torch.equal(rec.probs > 0, rec.mask.expand_as(rec.probs))
    assert torch.equal(allowed_keys(q, k, mask=mask, bias=bias, causal=True), masked.mask & hidden_by_bias)
    assert allowed_keys(q, k) is None
