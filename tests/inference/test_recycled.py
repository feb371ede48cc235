from __future__ import annotations

import pytest
import torch

from attnzoo.inference.hf_edit import edit_attention
from attnzoo.inference.recycled import RecycledAttention, recycled_attention_model, top_k_keys
from attnzoo.kernels.attention import attention_reference


def _stream(b: int, h: int, h_kv: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, h_kv, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h_kv, n, d, generator=g, dtype=torch.float64)
    return q, k, v


def _full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    g = q.shape[1] // k.shape[1]
    return attention_reference(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1))


def test_stride_one_is_exactly_full_attention() -> None:
    q, k, v = _stream(2, 4, 2, 20, 8)
    ra = RecycledAttention(stride=1, top_k=3)
    ra(q[:, :, :8], k[:, :, :8], v[:, :, :8])
    for t in range(8, 20):
        out, probs = ra(q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1])
        assert probs is not None
        assert torch.equal(out, _full(q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1]))


def test_partial_steps_attend_to_recycled_and_new_keys_only() -> None:
    q, k, v = _stream(1, 4, 2, 30, 8, seed=1)
    ra = RecycledAttention(stride=4, top_k=5)
    ra(q[:, :, :16], k[:, :, :16], v[:, :, :16])
    for t in range(16, 30):
        step = t - 16
        out, probs = ra(q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1])
        if step % 4 == 0:
            assert probs is not None
            torch.testing.assert_close(out, _full(q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1]))
            continue
        assert probs is None
        keep = torch.zeros(1, 2, t + 1, dtype=torch.bool)
        keep.scatter_(-1, ra.recycled, True)
        keep[..., ra.full_len :] = True
        assert int(keep.sum(-1).max()) == 5 + (t + 1 - ra.full_len)
        mask = keep.repeat_interleave(2, 1).unsqueeze(-2)
        expected = attention_reference(
            q[:, :, t : t + 1],
            k[:, :, : t + 1].repeat_interleave(2, 1),
            v[:, :, : t + 1].repeat_interleave(2, 1),
            mask=mask,
        )
        torch.testing.assert_close(out, expected)


def test_top_k_sums_query_heads_of_each_kv_head() -> None:
    probs = torch.zeros(1, 4, 1, 6, dtype=torch.float64)
    probs[0, 0, 0, 1] = probs[0, 1, 0, 4] = 0.9
    probs[0, 2, 0, 0] = probs[0, 3, 0, 5] = 0.9
    probs[0, 1, 0, 2] = 0.5
    assert top_k_keys(probs, 2, 2).tolist() == [[[1, 4], [0, 5]]]
    assert top_k_keys(probs, 2, 99).shape == (1, 2, 6)
    with pytest.raises(ValueError, match="num_kv_heads"):
        top_k_keys(probs, 3, 2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stride"):
        RecycledAttention(stride=0, top_k=4)
    with pytest.raises(ValueError, match="top_k"):
        RecycledAttention(stride=2, top_k=0)


def _decode(model: torch.nn.Module, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    out = model(ids[:, :prompt], use_cache=True)
    logits = [out.logits[:, -1:]]
    cache = out.past_key_values
    for t in range(prompt, ids.shape[1]):
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


def test_tiny_llama_stride_one_equals_full_attention(tiny_llama: torch.nn.Module) -> None:
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eager = _decode(tiny_llama, ids, 6)
        with edit_attention(tiny_llama, {}):
            full = _decode(tiny_llama, ids, 6)
        with recycled_attention_model(tiny_llama, stride=1, top_k=2):
            recycled = _decode(tiny_llama, ids, 6)
        with recycled_attention_model(tiny_llama, stride=3, top_k=2) as states:
            sparse = _decode(tiny_llama, ids, 6)
    assert torch.equal(recycled, full)
    torch.testing.assert_close(full, eager, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sparse[:, 2:], full[:, 2:], atol=1e-4)
    torch.testing.assert_close(sparse[:, :2], full[:, :2])  # prefill and the first (full) step
    assert all(s.step == 10 for s in states.values())
