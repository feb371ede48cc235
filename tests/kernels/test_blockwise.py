"""kernels.blockwise: block results merged by log-sum-exp equal full softmax attention (outputs and
lse), and the per-block backward recomputed from the merged lse sums to autograd's gradients of
attnzoo.kernels.attention, in float64, with masks, causal blocks and empty rows."""

from __future__ import annotations

import pytest
import torch

from attnzoo.kernels import attention, attention_reference
from attnzoo.kernels.blockwise import attention_block_grad, attention_with_lse, merge_partials

B, H, D, DV = 2, 3, 4, 5


def _qkv(nq: int, nk: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, H, nq, D, generator=g, dtype=torch.float64),
        torch.randn(B, H, nk, D, generator=g, dtype=torch.float64),
        torch.randn(B, H, nk, DV, generator=g, dtype=torch.float64),
    )


def _full_lse(q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    scores = scale * q @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.logsumexp(-1)


@pytest.mark.parametrize("scale", [None, 0.7])
def test_single_block_equals_attention(scale: float | None) -> None:
    q, k, v = _qkv(6, 9)
    out, lse = attention_with_lse(q, k, v, scale=scale)
    torch.testing.assert_close(out, attention(q, k, v, scale=scale))
    torch.testing.assert_close(lse, _full_lse(q, k, D**-0.5 if scale is None else scale, None))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("splits", [(3, 3, 3), (1, 5, 3), (9,)])
def test_merged_blocks_equal_full_attention(causal: bool, splits: tuple[int, ...]) -> None:
    q, k, v = _qkv(9, 9)
    full_mask = torch.ones(9, 9, dtype=torch.bool).tril() if causal else None
    out = lse = None
    start = 0
    for size in splits:
        block_mask = None if full_mask is None else full_mask[:, start : start + size]
        o, s = attention_with_lse(
            q, k[:, :, start : start + size], v[:, :, start : start + size], mask=block_mask
        )
        out, lse = (o, s) if out is None else merge_partials(out, lse, o, s)
        start += size
    torch.testing.assert_close(out, attention(q, k, v, causal=causal))
    torch.testing.assert_close(lse, _full_lse(q, k, D**-0.5, full_mask))


def test_merge_is_order_independent() -> None:
    q, k, v = _qkv(4, 8)
    a = attention_with_lse(q, k[:, :, :3], v[:, :, :3])
    b = attention_with_lse(q, k[:, :, 3:], v[:, :, 3:])
    ab, ba = merge_partials(*a, *b), merge_partials(*b, *a)
    torch.testing.assert_close(ab[0], ba[0])
    torch.testing.assert_close(ab[1], ba[1])


def test_causal_flag_matches_kernel_alignment() -> None:
    q, k, v = _qkv(3, 7)
    out, _ = attention_with_lse(q, k, v, causal=True)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal=True))


def test_fully_masked_rows_are_empty_and_merge_cleanly() -> None:
    q, k, v = _qkv(4, 6)
    mask_a = torch.zeros(4, 3, dtype=torch.bool)
    mask_a[:2] = True  # rows 2, 3 see nothing in block a
    out_a, lse_a = attention_with_lse(q, k[:, :, :3], v[:, :, :3], mask=mask_a)
    assert torch.isneginf(lse_a[:, :, 2:]).all() and (out_a[:, :, 2:] == 0).all()
    out_b, lse_b = attention_with_lse(q, k[:, :, 3:], v[:, :, 3:])
    out, lse = merge_partials(out_a, lse_a, out_b, lse_b)
    full_mask = torch.cat([mask_a, torch.ones(4, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(out, attention_reference(q, k, v, mask=full_mask))
    torch.testing.assert_close(lse, _full_lse(q, k, D**-0.5, full_mask))
    both_empty, lse_empty = merge_partials(out_a, lse_a, out_a, lse_a)
    assert torch.isfinite(both_empty).all() and (both_empty[:, :, 2:] == 0).all()
    assert torch.isneginf(lse_empty[:, :, 2:]).all()


def test_merge_rejects_mismatched_shapes() -> None:
    q, k, v = _qkv(4, 6)
    out, lse = attention_with_lse(q, k, v)
    with pytest.raises(ValueError, match="merge_partials"):
        merge_partials(out, lse, out[..., :2], lse)


@pytest.mark.parametrize("causal", [False, True])
def test_block_grads_sum_to_autograd(causal: bool) -> None:
    q, k, v = _qkv(8, 8, seed=1)
    scale = 0.6
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out_ref = attention(q, k, v, causal=causal, scale=scale)
    dout = torch.randn_like(out_ref)
    dq_ref, dk_ref, dv_ref = torch.autograd.grad(out_ref, (q, k, v), dout)
    q, k, v = (t.detach() for t in (q, k, v))
    full_mask = torch.ones(8, 8, dtype=torch.bool).tril() if causal else None
    lse = _full_lse(q, k, scale, full_mask)
    delta = (dout * out_ref.detach()).sum(-1)
    dq = torch.zeros_like(q)
    dks, dvs = [], []
    for start, stop in ((0, 3), (3, 5), (5, 8)):
        block_mask = None if full_mask is None else full_mask[:, start:stop]
        gq, gk, gv = attention_block_grad(
            q, k[:, :, start:stop], v[:, :, start:stop], dout, lse, delta, mask=block_mask, scale=scale
        )
        dq += gq
        dks.append(gk)
        dvs.append(gv)
    torch.testing.assert_close(dq, dq_ref)
    torch.testing.assert_close(torch.cat(dks, dim=2), dk_ref)
    torch.testing.assert_close(torch.cat(dvs, dim=2), dv_ref)


def test_attention_with_lse_is_differentiable() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(3, 5, seed=2))
    torch.autograd.gradcheck(lambda a, b, c: attention_with_lse(a, b, c, causal=True), (q, k, v))
