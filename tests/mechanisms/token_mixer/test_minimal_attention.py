"""minimal_attention (Bermeitinger et al. 2024): the merged form with W_qk^h = W_q^h W_k^h^T and the key
vector u_h = W_k^h b_q^h equals the separate form exactly (float64, causal or not, with biases); the
shared form is the separate one with W_k = W_q (symmetric scores); without value/output matrices each
head averages its own channel group; options are checked by name."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.token_mixer.minimal_attention import MinimalAttention

F64 = torch.float64
C, N = 12, 7


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _separate(heads: int, *, causal: bool, bias: bool = True) -> MinimalAttention:
    torch.manual_seed(0)
    module = MinimalAttention(C, heads, qk="separate", qkv_bias=bias, causal=causal).double()
    if bias:  # non-zero biases, so that the bias terms of the scores are exercised
        with torch.no_grad():
            module.qk.bias.normal_()
            module.v.bias.normal_()
    return module


@torch.no_grad()
def _merge(separate: MinimalAttention, heads: int) -> MinimalAttention:
    """The merged module with W_qk^h = W_q^h W_k^h^T and u_h = W_k^h b_q^h from ``separate``."""
    merged = MinimalAttention(C, heads, qk="merged", qkv_bias=True, causal=separate.causal).double()
    d = C // heads
    w_q, w_k = separate.qk.weight[:C].T, separate.qk.weight[C:].T  # (C_in, C_out): q = x W_q + b_q
    b_q = separate.qk.bias[:C]
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        merged.qk_weight[h] = w_q[:, cols] @ w_k[:, cols].T
        merged.key_bias[h] = w_k[:, cols] @ b_q[cols]
    merged.v.load_state_dict(separate.v.state_dict())
    merged.proj.load_state_dict(separate.proj.state_dict())
    return merged


@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_merged_equals_separate_with_bias(heads: int, causal: bool) -> None:
    separate = _separate(heads, causal=causal)
    merged = _merge(separate, heads)
    x = _x()
    torch.testing.assert_close(merged(x), separate(x), rtol=1e-12, atol=1e-12)


def test_merged_needs_the_key_vector() -> None:
    """Dropping u_h (the one bias term that does not cancel in the softmax) changes the output, so
    the equality above is not an accident of the bias terms."""
    separate = _separate(2, causal=False)
    merged = _merge(separate, 2)
    with torch.no_grad():
        merged.key_bias.zero_()
    assert not torch.allclose(merged(_x()), separate(_x()), atol=1e-6)


def test_merged_without_bias_equals_separate_without_bias() -> None:
    torch.manual_seed(1)
    separate = MinimalAttention(C, 2, qk="separate").double()
    merged = MinimalAttention(C, 2, qk="merged").double()
    assert merged.key_bias is None
    d = C // 2
    with torch.no_grad():
        w_q, w_k = separate.qk.weight[:C].T, separate.qk.weight[C:].T
        for h in range(2):
            cols = slice(h * d, (h + 1) * d)
            merged.qk_weight[h] = w_q[:, cols] @ w_k[:, cols].T
        merged.v.load_state_dict(separate.v.state_dict())
        merged.proj.load_state_dict(separate.proj.state_dict())
    torch.testing.assert_close(merged(_x(2)), separate(_x(2)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_shared_is_separate_with_equal_query_and_key(bias: bool) -> None:
    torch.manual_seed(2)
    shared = MinimalAttention(C, 3, qk="shared", qkv_bias=bias).double()
    separate = MinimalAttention(C, 3, qk="separate", qkv_bias=bias).double()
    with torch.no_grad():
        separate.qk.weight.copy_(torch.cat([shared.qk.weight, shared.qk.weight]))
        if bias:
            separate.qk.bias.copy_(torch.cat([shared.qk.bias, shared.qk.bias]))
        separate.v.load_state_dict(shared.v.state_dict())
        separate.proj.load_state_dict(shared.proj.state_dict())
    torch.testing.assert_close(shared(_x(3)), separate(_x(3)), rtol=1e-12, atol=1e-12)
    with attnzoo.capture(scores=True) as cap, torch.no_grad():
        shared(_x(3))
    scores = cap.records[0].scores
    torch.testing.assert_close(scores, scores.transpose(-1, -2))  # a symmetric similarity


@pytest.mark.parametrize("causal", [False, True])
def test_no_value_or_output_matrix_averages_channel_groups(causal: bool) -> None:
    torch.manual_seed(3)
    module = MinimalAttention(C, 3, qk="shared", value_proj=False, out_proj=False, causal=causal).double()
    assert module.v is None and module.proj is None
    x = _x(4)
    d = C // 3
    q = module.qk(x).view(2, N, 3, d).transpose(1, 2)
    scores = q @ q.transpose(-1, -2) * d**-0.5
    if causal:
        scores = scores.masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf"))
    values = x.view(2, N, 3, d).transpose(1, 2)
    want = (scores.softmax(-1) @ values).transpose(1, 2).reshape(2, N, C)
    torch.testing.assert_close(module(x), want, rtol=1e-12, atol=1e-12)


def test_merged_initial_scores_match_the_separate_scale() -> None:
    """The merged matrix starts at the variance of a product of two default Linear weights."""
    torch.manual_seed(4)
    merged = MinimalAttention(64, 4, qk="merged")
    separate = MinimalAttention(64, 4, qk="separate")
    d = 16
    w_q, w_k = separate.qk.weight[:64].T, separate.qk.weight[64:].T
    products = torch.stack([w_q[:, h * d : (h + 1) * d] @ w_k[:, h * d : (h + 1) * d].T for h in range(4)])
    ratio = merged.qk_weight.detach().std() / products.detach().std()
    assert 0.8 < float(ratio) < 1.25


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"qk": "diagonal"}, ValueError, "qk"),
        ({"value_proj": 0}, TypeError, "value_proj"),
        ({"out_proj": "no"}, TypeError, "out_proj"),
        ({"qkv_bias": None}, TypeError, "qkv_bias"),
        ({"causal": 1}, TypeError, "causal"),
        ({"attn_drop": 1.5}, ValueError, "attn_drop"),
        ({"num_heads": 5}, ValueError, "num_heads"),
    ],
)
def test_bad_options_are_named(kwargs: dict, error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle):
        attnzoo.create("minimal_attention", **{"dim": C, "num_heads": 2, **kwargs})


def test_card_lists_the_guesses_and_variants() -> None:
    card = attnzoo.card("reduced_attention")
    assert card.name == "minimal_attention"
    assert card.paper == "Reducing the Transformer Architecture to a Minimum"
    assert sum(line.startswith("Guess") for line in card.ledger) >= 4
    assert {"standard", "merged", "shared", "no-vo", "minimal"} <= set(card.bench["variants"])
