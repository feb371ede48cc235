"""ACMIL: multi-branch attention, stochastic top-K instance masking, padded bags, heads."""

from __future__ import annotations

import math

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.pooling.acmil import ACMIL, acmil_diversity_loss


def _model(**kw: object) -> ACMIL:
    torch.manual_seed(0)
    args = {"dim": 12, "hidden_dim": 10, "attn_dim": 6, "branches": 4, "num_classes": 3}
    args.update(kw)
    return ACMIL(**args).double()  # type: ignore[arg-type]


def _official_style(m: ACMIL, bag: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The ACMIL_GA equations for one bag (N, C), STKIM drawn like the paper's code, in the test."""
    h = torch.relu(bag @ m.embed.weight.T)
    att = m.attention
    a = (torch.tanh(h @ att.proj_v.weight.T + att.proj_v.bias)
         * torch.sigmoid(h @ att.proj_u.weight.T + att.proj_u.bias)) @ att.score.weight.T + att.score.bias
    a = a.T  # (M, N)
    if m.training and m.n_masked > 0:
        k, n = a.shape
        top = min(m.n_masked, n)
        idx = torch.topk(a, top, dim=-1).indices
        chosen = torch.argsort(torch.rand(*idx.shape), dim=-1)[:, : int(top * m.mask_drop)]
        drop = idx[torch.arange(k)[:, None], chosen]
        keep = torch.ones(k, n)
        keep.scatter_(-1, drop, 0)
        a = a.masked_fill(keep == 0, -1e9)
    w = a.softmax(dim=1)
    feats = w @ h
    branch = torch.stack([head(feats[i]) for i, head in enumerate(m.branch_heads)])
    bag_feat = w.mean(0, keepdim=True) @ h
    return branch, m.bag_head(bag_feat), a, w, bag_feat[0]


def test_eval_matches_equations_and_heads() -> None:
    m = _model(n_masked=4, mask_drop=0.5).eval()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    out = m.classify(x)
    pool = m(x)
    for b in range(2):
        branch, bag, logits, w, z = _official_style(m, x[b])
        torch.testing.assert_close(out.branch_logits[b], branch)
        torch.testing.assert_close(out.bag_logits[b], bag[0])
        torch.testing.assert_close(out.attention_logits[b], logits)
        torch.testing.assert_close(pool.attention[b], w)
        torch.testing.assert_close(pool.pooled[b], z)
    torch.testing.assert_close(out.pooled, pool.pooled)


def test_stkim_matches_official_draw_for_one_bag() -> None:
    m = _model(n_masked=5, mask_drop=0.6).train()
    x = torch.randn(1, 9, 12, dtype=torch.float64)
    torch.manual_seed(123)
    ours = m.classify(x)
    torch.manual_seed(123)
    branch, bag, logits, w, _ = _official_style(m, x[0])
    torch.testing.assert_close(ours.branch_logits[0], branch)
    torch.testing.assert_close(ours.bag_logits, bag)
    torch.testing.assert_close(ours.attention[0], w)
    ours_logits = ours.attention_logits[0]
    torch.testing.assert_close(ours_logits.masked_fill(ours_logits.isneginf(), -1e9), logits)


@pytest.mark.parametrize("n_masked,mask_drop", [(4, 0.6), (10, 0.5), (3, 0.99)])
def test_stkim_drops_exactly_floor_k_p_of_the_top_k(n_masked: int, mask_drop: float) -> None:
    m = _model(n_masked=n_masked, mask_drop=mask_drop).train()
    lengths = [8, 3, 6]
    x = torch.randn(3, 8, 12, dtype=torch.float64)
    mask = torch.arange(8)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        out = m.classify(x, mask=mask)
        raw = m.attention(torch.relu(m.embed(x)))
    for b, n in enumerate(lengths):
        k_eff = min(n_masked, n)
        dropped = (out.attention[b, :, :n] == 0)
        assert torch.all(dropped.sum(-1) == math.floor(k_eff * mask_drop))
        top = raw[b, :, :n].topk(k_eff, dim=-1).indices
        in_top = torch.zeros_like(dropped).scatter_(-1, top, True)
        assert not torch.any(dropped & ~in_top)
        assert torch.all(out.attention[b, :, n:] == 0)


def test_stkim_is_training_only_and_seeded() -> None:
    m = _model(n_masked=4, mask_drop=0.5)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    m.eval()
    assert torch.all(m(x).attention > 0)
    m.train()
    m.generator = torch.Generator().manual_seed(7)
    a1 = m(x).attention
    m.generator = torch.Generator().manual_seed(7)
    a2 = m(x).attention
    assert torch.equal(a1, a2)
    assert torch.all((a1 == 0).sum(-1) == 2)


def test_padded_batch_equals_each_bag_alone() -> None:
    m = _model().eval()
    lengths = [6, 2, 9]
    bags = [torch.randn(n, 12, dtype=torch.float64) for n in lengths]
    x = torch.full((3, 9, 12), 50.0, dtype=torch.float64)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)] = bag
        mask[i, : len(bag)] = True
    out = m.classify(x, mask=mask)
    for i, bag in enumerate(bags):
        alone = m.classify(bag[None])
        torch.testing.assert_close(out.branch_logits[i], alone.branch_logits[0])
        torch.testing.assert_close(out.bag_logits[i], alone.bag_logits[0])
        torch.testing.assert_close(out.attention[i, :, : len(bag)], alone.attention[0])
        assert torch.all(out.attention[i, :, len(bag) :] == 0)


def test_pooled_is_mean_of_branch_features() -> None:
    m = _model().eval()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    out = m(x)
    h = torch.relu(m.embed(x))
    torch.testing.assert_close(out.pooled, (out.attention @ h).mean(1))


def test_diversity_loss() -> None:
    a = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    torch.testing.assert_close(acmil_diversity_loss(a), torch.tensor([1.0 / 3.0]))
    with pytest.raises(ValueError):
        acmil_diversity_loss(a[:, :1])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mask_drop"):
        ACMIL(8, 4, 4, 2, mask_drop=1.0)
    with pytest.raises(ValueError, match="n_masked"):
        ACMIL(8, 4, 4, 2, n_masked=-1)
    with pytest.raises(ValueError, match="num_classes"):
        attnzoo.create("acmil", dim=8, hidden_dim=4, attn_dim=4, branches=2).classify(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match=r"dimension 2"):
        _model().classify(torch.randn(1, 3, 5, dtype=torch.float64))
