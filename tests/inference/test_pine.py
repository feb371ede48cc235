from __future__ import annotations

import itertools

import pytest
import torch

from attnzoo.inference.pine import PINEAttention, PineLayout, pine_attention, pine_model, rope_inv_freq
from attnzoo.kernels.attention import attention_reference

PREFIX, DOCS = 3, (4, 2, 5)


def _rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    angle = positions.to(x.dtype)[:, None] * inv_freq.to(x.dtype)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def _blocks(n: int) -> list[torch.Tensor]:
    bounds = list(itertools.accumulate(DOCS, initial=PREFIX))
    idx = torch.arange(n)
    return [idx[:PREFIX]] + [idx[a:b] for a, b in itertools.pairwise(bounds)] + [idx[bounds[-1] :]]


def _permutation(order: tuple[int, ...], n: int) -> torch.Tensor:
    blocks = _blocks(n)
    return torch.cat([blocks[0], *(blocks[1 + i] for i in order), blocks[-1]])


def test_without_documents_is_causal_rope_attention() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=g, dtype=torch.float64) for _ in range(3))
    inv = rope_inv_freq(8)
    pos = torch.arange(9)
    expected = attention_reference(_rotate(q, pos, inv), _rotate(k, pos, inv), v, causal=True)
    torch.testing.assert_close(pine_attention(q, k, v, PineLayout(9, ())), expected)
    torch.testing.assert_close(pine_attention(q, k, v, PineLayout(2, ())), expected)
    torch.testing.assert_close(pine_attention(q[:, :, -3:], k, v, PineLayout(4, ())), expected[:, :, -3:])


def test_documents_attend_bidirectionally_and_prefix_is_untouched() -> None:
    g = torch.Generator().manual_seed(1)
    n = PREFIX + sum(DOCS) + 4
    q, k, v = (torch.randn(1, 2, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    out = pine_attention(q, k, v, PineLayout(PREFIX, DOCS))
    causal = pine_attention(q, k, v, PineLayout(n, ()))
    torch.testing.assert_close(out[:, :, :PREFIX], causal[:, :, :PREFIX])
    # the first token of the first document sees the later documents
    v2 = v.clone()
    v2[:, :, PREFIX + DOCS[0] + 1] += 1.0
    assert not torch.allclose(
        pine_attention(q, k, v2, PineLayout(PREFIX, DOCS))[:, :, PREFIX], out[:, :, PREFIX]
    )


@pytest.mark.parametrize("order", [(1, 0, 2), (2, 1, 0), (1, 2, 0)])
def test_permuting_documents_permutes_outputs(order: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(2)
    n = PREFIX + sum(DOCS) + 4
    q, k, v = (torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    perm = _permutation(order, n)
    out = pine_attention(q, k, v, PineLayout(PREFIX, DOCS))
    out_p = pine_attention(
        q[:, :, perm], k[:, :, perm], v[:, :, perm], PineLayout(PREFIX, tuple(DOCS[i] for i in order))
    )
    torch.testing.assert_close(out_p, out[:, :, perm], atol=1e-12, rtol=1e-10)


def test_module_permutation_invariance_and_errors() -> None:
    torch.manual_seed(0)
    m = PINEAttention(16, 2).double()
    n = PREFIX + sum(DOCS) + 3
    x = torch.randn(2, n, 16, dtype=torch.float64)
    perm = _permutation((2, 0, 1), n)
    y = m(x, PineLayout(PREFIX, DOCS))
    y_p = m(x[:, perm], PineLayout(PREFIX, (DOCS[2], DOCS[0], DOCS[1])))
    torch.testing.assert_close(y_p, y[:, perm], atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="shorter"):
        m(x[:, :5], PineLayout(PREFIX, DOCS))
    with pytest.raises(ValueError, match="even"):
        PINEAttention(6, 2)
    with pytest.raises(ValueError, match="documents"):
        PineLayout(1, (0,))


def test_tiny_llama_answer_invariant_to_document_order(tiny_llama: torch.nn.Module) -> None:
    tiny_llama.double()
    g = torch.Generator().manual_seed(4)
    n = PREFIX + sum(DOCS) + 3
    ids = torch.randint(0, 50, (1, n), generator=g)
    order = (2, 0, 1)
    perm = _permutation(order, n)
    permuted_docs = tuple(DOCS[i] for i in order)
    with torch.no_grad():
        with pine_model(tiny_llama, PREFIX, DOCS):
            a = tiny_llama(ids).logits
            pre = tiny_llama(ids[:, :-1], use_cache=True)
            step = tiny_llama(ids[:, -1:], past_key_values=pre.past_key_values, use_cache=True).logits
        with pine_model(tiny_llama, PREFIX, permuted_docs):
            b = tiny_llama(ids[:, perm]).logits
        with pine_model(tiny_llama, n, ()):
            causal = tiny_llama(ids).logits
        plain = tiny_llama(ids).logits
    torch.testing.assert_close(b[:, -3:], a[:, -3:], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(b, a[:, perm], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(step[:, -1], a[:, -1], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(causal, plain, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(plain[:, -1], a[:, -1], atol=1e-4)
