from __future__ import annotations

import itertools

import pytest
import torch

from attnzoo.inference.pine import (
    PINEAttention,
    PineLayout,
    pine_attention,
    pine_attention_rotated,
    pine_model,
    rope_inv_freq,
    rotary_embedding,
)
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
            step = tiny_llama(ids[:, -1:], cache=pre.cache, use_cache=True).logits
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


def test_pine_attention_rotated_undoes_the_models_rope(tiny_llama: torch.nn.Module) -> None:
    tiny_llama.double()
    rotary = rotary_embedding(tiny_llama)
    assert rotary is tiny_llama.model.rotary_emb
    g = torch.Generator().manual_seed(5)
    n = PREFIX + sum(DOCS) + 2
    q = torch.randn(1, 4, n, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, n, 8, generator=g, dtype=torch.float64) for _ in range(2))
    pos = torch.arange(n)
    rq, rk = _rotate(q, pos, rotary.inv_freq), _rotate(k, pos, rotary.inv_freq)  # as the model's attention
    layout = PineLayout(PREFIX, DOCS)
    expected = pine_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), layout)
    torch.testing.assert_close(pine_attention_rotated(rq, rk, v, layout, rotary), expected)
    torch.testing.assert_close(
        pine_attention_rotated(rq[:, :, -3:], rk, v, layout, rotary), expected[:, :, -3:]
    )
    with pytest.raises(ValueError, match="head count dividing the 4 query heads"):
        pine_attention_rotated(rq, rk[:, :1].expand(1, 3, n, 8), v[:, :1].expand(1, 3, n, 8), layout, rotary)


def test_rotary_embedding_refuses_scaled_or_missing_rope() -> None:
    from tests import helpers

    scaled = helpers.tiny_llama(num_hidden_layers=1, rope_parameters={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="LlamaForCausalLM has 'linear' RoPE"):
        rotary_embedding(scaled)
    with pytest.raises(ValueError, match="'linear' RoPE"), pine_model(scaled, 1, (2,)):
        pass
    with pytest.raises(ValueError, match="Linear has none"):
        rotary_embedding(torch.nn.Linear(2, 2))
