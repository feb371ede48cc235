"""Task generators: the definitions (Zoology MQAR, H3 recall/induction, Mamba selective copying,
LRA ListOps, sklearn digits, Ilse et al. bags), seeding and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnzoo.tasks import IGNORE, TASKS, get_task
from attnzoo.tasks.digits import digit_bags, digits_split
from attnzoo.tasks.listops import LISTOPS_VOCAB, evaluate_listops, listops
from attnzoo.tasks.recall import associative_recall, induction_heads, multiquery_ar, selective_copying


def test_mqar_matches_zoology_definition() -> None:
    v, n, k = 64, 32, 4
    tok, tgt = multiquery_ar(200, vocab_size=v, seq_len=n, num_kv_pairs=k, seed=3)
    assert tok.shape == tgt.shape == (200, n)
    keys, values = tok[:, 0 : 2 * k : 2], tok[:, 1 : 2 * k : 2]
    assert bool(((keys >= 1) & (keys < v // 2)).all()) and bool((values >= v // 2).all())
    assert all(len(set(r.tolist())) == k for r in keys)  # distinct keys per example
    assert bool((tgt[:, : 2 * k] == IGNORE).all())  # the pairs are never scored
    for s in range(200):
        pos = (tgt[s] != IGNORE).nonzero().flatten()
        assert len(pos) == k and bool(((pos - 2 * k) % 2 == 0).all())  # each key once, even offsets
        pairs = dict(zip(keys[s].tolist(), values[s].tolist()))
        for p in pos.tolist():
            assert pairs[int(tok[s, p])] == int(tgt[s, p])  # query = key, target = its value
    assert bool((tok >= 0).all() and (tok < v).all())


def test_mqar_power_law_and_no_random_fill() -> None:
    _, tgt = multiquery_ar(2000, vocab_size=128, seq_len=64, num_kv_pairs=4, seed=0)
    gaps = ((tgt != IGNORE).nonzero()[:, 1] - 8) // 2
    counts = np.bincount(gaps.numpy(), minlength=28)
    assert counts[0] > counts[5] > counts[-1]  # short gaps are the most frequent
    tok0, _ = multiquery_ar(5, vocab_size=40, seq_len=16, num_kv_pairs=2, random_non_queries=False)
    assert bool((tok0[:, 4:][tok0[:, 4:] >= 20] == 0).all())  # only keys and zeros after the pairs


def test_mqar_seeded_and_checked() -> None:
    a = multiquery_ar(8, vocab_size=64, seq_len=32, num_kv_pairs=4, seed=1)
    b = multiquery_ar(8, vocab_size=64, seq_len=32, num_kv_pairs=4, seed=1)
    c = multiquery_ar(8, vocab_size=64, seq_len=32, num_kv_pairs=4, seed=2)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="even"):
        multiquery_ar(2, vocab_size=64, seq_len=31, num_kv_pairs=4)
    with pytest.raises(ValueError, match="vocab_size must exceed seq_len"):
        multiquery_ar(2, vocab_size=32, seq_len=32, num_kv_pairs=4)
    with pytest.raises(ValueError, match="num_kv_pairs"):
        multiquery_ar(2, vocab_size=64, seq_len=32, num_kv_pairs=9)


def test_associative_recall_answer_is_the_pairs_value() -> None:
    tok, tgt = associative_recall(100, vocab_size=12, seq_len=16, seed=0)
    assert tok.shape == (100, 18)
    assert bool((tgt[:, :-1] == IGNORE).all())
    assert bool((tok[:, -2] == 10).all())  # '=>' before the query key
    for s in range(100):
        query = int(tok[s, -1])
        keys, vals = tok[s, 0:16:2].tolist(), tok[s, 1:16:2].tolist()
        assert query in keys and vals[keys.index(query)] == int(tgt[s, -1])
        assert all(k < 5 for k in keys) and all(5 <= x < 10 for x in vals)
    _, full = associative_recall(4, vocab_size=12, seq_len=16, score_all=True)
    assert bool((full != IGNORE).all())


def test_induction_heads_answer_follows_the_trigger() -> None:
    tok, tgt = induction_heads(100, vocab_size=10, seq_len=20, seed=0)
    assert tok.shape == (100, 21) and bool((tok[:, -1] == 9).all())
    for s in range(100):
        first = int((tok[s, :-1] == 9).nonzero()[0])
        assert int(tok[s, first + 1]) == int(tgt[s, -1])
    assert bool((tgt[:, :-1] == IGNORE).all())


def test_selective_copying_targets_are_the_data_in_order() -> None:
    tok, tgt = selective_copying(50, vocab_size=10, seq_len=20, num_tokens=4, seed=0)
    assert tok.shape == (50, 24) and bool((tok[:, 20:] == 1).all())
    for s in range(50):
        data = tok[s, :20][tok[s, :20] != 0]
        assert torch.equal(data, tgt[s, 20:])
    assert bool((tgt[:, :20] == IGNORE).all())
    with pytest.raises(ValueError, match="num_tokens"):
        selective_copying(2, vocab_size=10, seq_len=3, num_tokens=4)


def test_listops_grammar_and_values() -> None:
    assert evaluate_listops("[MAX 2 9 [MIN 4 7 ] 0 ]".split()) == 9
    assert evaluate_listops("[SM 5 6 [MED 1 2 3 4 ] ]".split()) == (5 + 6 + 2) % 10
    assert evaluate_listops("[MED 1 4 ]".split()) == 2  # median 2.5 truncated
    with pytest.raises(ValueError, match="malformed"):
        evaluate_listops("[MAX 2".split())
    tok, tgt = listops(50, min_len=4, max_len=20, max_depth=3, max_args=4, seed=0)
    eq = LISTOPS_VOCAB.index("=")
    for s in range(50):
        n = int((tok[s] == eq).nonzero()[0])
        assert 4 <= n <= 20 and bool((tok[s, n + 1 :] == 0).all())
        expr = [LISTOPS_VOCAB[i] for i in tok[s, :n].tolist()]
        assert LISTOPS_VOCAB[int(tgt[s, n])] == str(evaluate_listops(expr))
        assert int((tgt[s] != IGNORE).sum()) == 1


def test_digits_split_is_fixed_and_bags_follow_ilse() -> None:
    x_tr, x_te, y_tr, y_te = digits_split()
    assert x_tr.shape == (1347, 1, 8, 8) and x_te.shape == (450, 1, 8, 8)
    assert float(x_tr.max()) <= 1.0 and torch.equal(digits_split()[3], y_te)
    bags, mask, labels, inst = digit_bags(x_tr, y_tr, 300, seed=0)
    sizes = mask.sum(1).float()
    assert 9.0 < float(sizes.mean()) < 10.5 and int(sizes.min()) >= 1
    assert torch.equal(labels, ((inst == 9) & mask).any(1).long())
    assert 0.4 < float(labels.float().mean()) < 0.9
    assert float(bags[~mask].abs().sum()) == 0.0


def test_catalog_presets_and_errors() -> None:
    assert set(TASKS) == {
        "mqar",
        "associative_recall",
        "induction_heads",
        "selective_copying",
        "listops",
        "digits",
        "mil_digits",
    }
    for spec in TASKS.values():
        assert "tiny" in spec.presets and spec.default_preset in spec.presets
    headline = get_task("mqar").preset()  # Zoology's MQAR setting at width 64, see catalog docstring
    assert get_task("mqar").default_preset == "zoology-cpu"
    assert headline.data == {"vocab_size": 1024, "seq_len": 64, "num_kv_pairs": 16}
    assert headline.model == {  # Zoology's model: BaseConv block, mechanism block, tied, no positions
        "width": 64,
        "depth": 2,
        "mlp_ratio": 0.0,
        "base_conv": 3,
        "positional": False,
        "tie_embeddings": True,
    }
    for name, p in get_task("mqar").presets.items():
        if name != "tiny":  # the CPU-sized range
            assert 256 <= p.data["vocab_size"] <= 8192 and 64 <= p.data["seq_len"] <= 256
            assert 4 <= p.data["num_kv_pairs"] <= 16
    with pytest.raises(ValueError, match="unknown task"):
        get_task("mnist")
    with pytest.raises(ValueError, match="no preset"):
        get_task("mqar").preset("huge")
