"""Reversed attention (DependencyViT): float64 loop reference of the paper's equations (no official
code exists), message conservation, dependency tree and leaf pruning."""

from __future__ import annotations

import math

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.token_mixer.reversed_attention import (
    ReversedAttention,
    dependency_parents,
    prune_leaves,
)

F64 = torch.float64


@torch.no_grad()
def _equations(
    module: ReversedAttention, x: torch.Tensor, message: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-by-token loops over Sec. 3.2: returns (out, message, A^M, A^F^T per head)."""
    b, n, c = x.shape
    h = module.num_heads
    d = c // h
    w, bias = module.qkv.weight, module.qkv.bias
    outs = torch.zeros(b, n, c, dtype=F64)
    new_message = torch.zeros(b, n, dtype=F64)
    dep = torch.zeros(b, n, n, dtype=F64)
    reverse = torch.zeros(b, h, n, n, dtype=F64)
    for bi in range(b):
        qkv = [w @ x[bi, t] + bias for t in range(n)]
        q = [[qkv[t][hh * d : (hh + 1) * d] for hh in range(h)] for t in range(n)]
        k = [[qkv[t][c + hh * d : c + (hh + 1) * d] for hh in range(h)] for t in range(n)]
        v = [[qkv[t][2 * c + hh * d : 2 * c + (hh + 1) * d] for hh in range(h)] for t in range(n)]
        # head selector P[j, h] and message controller m[j]
        select = []
        for j in range(n):
            logits = [
                float(module.head_selector(x[bi, j])[hh]) / module.selector_temperature for hh in range(h)
            ]
            top = max(logits)
            z = sum(math.exp(s - top) for s in logits)
            select.append([math.exp(s - top) / z for s in logits])
            prev = 1.0 if message is None else float(message[bi, j])
            gate = float(module.message_controller(x[bi, j])[0])
            new_message[bi, j] = prev / (1.0 + math.exp(-gate))
        for hh in range(h):
            for j in range(n):  # child j distributes one unit over its parents i
                logits = [float(q[j][hh] @ k[i][hh]) / math.sqrt(d) for i in range(n)]
                top = max(logits)
                z = sum(math.exp(s - top) for s in logits)
                for i in range(n):
                    reverse[bi, hh, i, j] = math.exp(logits[i] - top) / z
            head_out = torch.zeros(n, d, dtype=F64)
            for i in range(n):
                for j in range(n):
                    a_r = reverse[bi, hh, i, j] * select[j][hh] * new_message[bi, j]
                    head_out[i] += a_r * v[j][hh]
                    dep[bi, i, j] += a_r
            outs[bi, :, hh * d : (hh + 1) * d] = head_out
    return module.proj(outs), new_message, dep, reverse


def _module(**kw: object) -> ReversedAttention:
    return ReversedAttention(8, 2, **kw).to(F64).eval()


def test_forward_matches_equations() -> None:
    module = _module()
    x = torch.randn(2, 5, 8, dtype=F64)
    out, *_ = _equations(module, x)
    torch.testing.assert_close(module(x), out)


def test_forward_tree_chains_the_message_controller() -> None:
    first, second = _module(), _module()
    x = torch.randn(2, 6, 8, dtype=F64)
    one = first.forward_tree(x)
    out, message, dep, _ = _equations(first, x)
    torch.testing.assert_close(one.out, out)
    torch.testing.assert_close(one.message, message)
    torch.testing.assert_close(one.dependency, dep)
    two = second.forward_tree(one.out, one.message)
    out2, message2, dep2, _ = _equations(second, one.out, one.message)
    torch.testing.assert_close(two.out, out2)
    torch.testing.assert_close(two.message, message2)
    torch.testing.assert_close(two.dependency, dep2)
    assert (two.message <= one.message).all(), "the cumulative message only shrinks"


def test_messages_are_conserved() -> None:
    """Each child sends m_j in total: columns of A^M sum to m_j (P sums to one over heads)."""
    module = _module()
    res = module.forward_tree(torch.randn(3, 7, 8, dtype=F64))
    torch.testing.assert_close(res.dependency.sum(dim=1), res.message)


def test_capture_records_query_normalised_weights() -> None:
    module = _module()
    x = torch.randn(2, 5, 8, dtype=F64)
    with attnzoo.capture(module) as cap:
        out = module(x)
    torch.testing.assert_close(out, module(x))
    (rec,) = cap[""]
    assert rec.kind == "reversed" and rec.probs.shape == (2, 2, 5, 5)
    torch.testing.assert_close(rec.probs.sum(dim=-2), torch.ones(2, 2, 5, dtype=F64))
    torch.testing.assert_close(rec.probs, _equations(module, x)[3])


def test_without_selector_and_controller_is_transposed_attention() -> None:
    module = _module(head_selector=False, message_controller=False)
    x = torch.randn(2, 6, 8, dtype=F64)
    q, k, v = module.qkv(x).reshape(2, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    forward = (q @ k.transpose(-1, -2) / 2.0).softmax(dim=-1)
    expected = module.proj((forward.transpose(-1, -2) @ v).transpose(1, 2).reshape(2, 6, 8))
    torch.testing.assert_close(module(x), expected)
    res = module.forward_tree(x)
    torch.testing.assert_close(res.message, torch.ones(2, 6, dtype=F64))
    torch.testing.assert_close(res.dependency.sum(dim=1), torch.full((2, 6), 2.0, dtype=F64))


def test_dependency_parents_and_roots() -> None:
    # A^M[i, j]: parent i, child j. Children 1 and 2 send mostly to 0; 0 keeps to itself (root).
    dep = torch.tensor([[[0.9, 0.8, 0.6], [0.05, 0.1, 0.3], [0.05, 0.1, 0.1]]], dtype=F64)
    parents = dependency_parents(dep)
    assert parents.tolist() == [[0, 0, 0]]
    with pytest.raises(ValueError, match="dependency"):
        dependency_parents(torch.zeros(1, 3, 4))


def test_prune_leaves_keeps_the_most_received_tokens_in_order() -> None:
    x = torch.arange(2 * 5 * 3, dtype=F64).reshape(2, 5, 3)
    message = torch.rand(2, 5, dtype=F64)
    dep = torch.zeros(2, 5, 5, dtype=F64)
    received = torch.tensor([[0.1, 3.0, 0.0, 2.0, 1.0], [5.0, 0.0, 0.2, 0.1, 4.0]], dtype=F64)
    dep[:, :, 0] = received
    kept, kept_message, index = prune_leaves(x, message, dep, keep_ratio=0.6)
    assert index.tolist() == [[1, 3, 4], [0, 2, 4]]
    torch.testing.assert_close(kept, torch.stack([x[0, [1, 3, 4]], x[1, [0, 2, 4]]]))
    torch.testing.assert_close(kept_message, torch.stack([message[0, [1, 3, 4]], message[1, [0, 2, 4]]]))
    assert prune_leaves(x, message, dep, keep_ratio=0.01)[0].shape == (2, 1, 3)
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="keep_ratio"):
            prune_leaves(x, message, dep, keep_ratio=bad)


def test_pruned_tokens_feed_the_next_layer() -> None:
    """DependencyViT-Lite step: prune after a layer, the next layer runs on N' tokens."""
    first, second = _module(), _module()
    x = torch.randn(2, 8, 8, dtype=F64)
    res = first.forward_tree(x)
    kept, message, _ = prune_leaves(res.out, res.message, res.dependency, keep_ratio=0.5)
    nxt = second.forward_tree(kept, message)
    assert nxt.out.shape == (2, 4, 8) and nxt.dependency.shape == (2, 4, 4)
    torch.testing.assert_close(nxt.out, _equations(second, kept, message)[0])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        ReversedAttention(9, 2)
    with pytest.raises(ValueError, match="selector_temperature"):
        ReversedAttention(8, 2, selector_temperature=0.0)
    module = _module()
    with pytest.raises(ValueError, match="message"):
        module.forward_tree(torch.randn(2, 5, 8, dtype=F64), torch.ones(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="dim=8"):
        module.forward_tree(torch.randn(2, 5, 6, dtype=F64))
