"""Attention on graph-structured prompts (Guan et al., "Attention Mechanisms Perspective: Exploring
LLM Processing of Graph-Structured Data", ICML 2025, arXiv 2505.02130).

Guan et al. describe graphs to LLMs as text and read the attention between node tokens: LLMs do
not concentrate attention on a node's graph neighbours as message passing would, and the attention
distribution over nodes does not follow the topology. attnzoo measures that per layer and head:

* :func:`graph_prompts` writes random graphs as text in one of three encodings (after Fatemi et
  al., "Talk like a Graph", 2023): ``edge_list`` (``0 - 1 , 1 - 3 ,``), ``adjacency``
  (``0 : 1 3 ; 1 : 0 2 ;``) and ``incident`` (``0 is connected to 1 .``), and records which word
  mentions which node; an optional query ``? u v`` asks whether ``u`` and ``v`` are adjacent.
* :func:`graph_attention_metrics` splits, for every query token that mentions a node ``u``, its
  attention over keys into the mentions of ``u``'s neighbours, of ``u`` itself, of the other nodes,
  and all other tokens; it gives the neighbour *lift* (attention per neighbour token over
  attention per other-node token; 1 = no preference) and the Spearman correlation between the
  attention to another node's mention and the graph distance (negative = attention falls with
  distance), beside the same correlation with the token distance (the positional confound).
* :func:`graph_attention` captures a model's attention on the prompts and returns the metrics per
  layer; attnzoo models and ``transformers`` models (eager or ``attnzoo_*`` attention) with a tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from attnzoo.analysis.metrics import MetricCard, register_metric
from attnzoo.analysis.templates import WordVocab
from attnzoo.capture import capture
from attnzoo.checks import check_int
from attnzoo.tasks.data import IGNORE, TaskData

__all__ = [
    "ENCODINGS",
    "GraphPrompt",
    "graph_attention",
    "graph_attention_metrics",
    "graph_prompts",
    "graph_task_data",
    "graph_vocab",
]

ENCODINGS: tuple[str, ...] = ("edge_list", "adjacency", "incident")
NODE_WORDS = tuple(str(i) for i in range(10))
CLASSES = ("neighbour", "self", "other_node", "rest")


@dataclass
class GraphPrompt:
    """A graph written as words.

    Attributes:
        num_nodes: nodes ``0 .. num_nodes - 1``.
        edges: undirected edges ``(u, v)``, ``u < v``.
        encoding: one of :data:`ENCODINGS`.
        words: the prompt, one word per token of a word-level vocabulary.
        node_at: per word, the node it mentions or -1.
        query: ``(u, v)`` of the trailing question ``? u v``, or ``None``.
        answer: ``"yes"`` if the queried nodes are adjacent, ``"no"`` otherwise (``None`` without query).
    """

    num_nodes: int
    edges: list[tuple[int, int]]
    encoding: str
    words: list[str]
    node_at: list[int]
    query: tuple[int, int] | None = None
    answer: str | None = None

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def adjacency(self) -> torch.Tensor:
        """``(V, V)`` bool adjacency."""
        a = torch.zeros(self.num_nodes, self.num_nodes, dtype=torch.bool)
        for u, v in self.edges:
            a[u, v] = a[v, u] = True
        return a

    def distances(self) -> torch.Tensor:
        """``(V, V)`` shortest-path lengths (``inf`` between components), by breadth-first search."""
        adj = self.adjacency()
        dist = torch.full((self.num_nodes, self.num_nodes), float("inf"))
        for s in range(self.num_nodes):
            dist[s, s], frontier, d = 0, [s], 0
            while frontier:
                d += 1
                nxt = [
                    v
                    for u in frontier
                    for v in adj[u].nonzero().flatten().tolist()
                    if dist[s, v] == float("inf")
                ]
                for v in set(nxt):
                    dist[s, v] = d
                frontier = list(set(nxt))
        return dist


def _encode(edges: list[tuple[int, int]], num_nodes: int, encoding: str) -> list[str]:
    if encoding == "edge_list":
        return ["graph", ":", *[w for u, v in edges for w in (str(u), "-", str(v), ",")]]
    if encoding == "adjacency":
        nbrs = {
            u: sorted({b for a, b in edges if a == u} | {a for a, b in edges if b == u})
            for u in range(num_nodes)
        }
        return ["graph", ":", *[w for u in range(num_nodes) for w in (str(u), ":", *map(str, nbrs[u]), ";")]]
    if encoding == "incident":
        return [w for u, v in edges for w in (str(u), "is", "connected", "to", str(v), ".")]
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


def graph_vocab() -> WordVocab:
    """The words of every encoding, the node names ``0``-``9`` and the query words."""
    words = [w for e in ENCODINGS for w in _encode([(0, 1)], 2, e) if w not in NODE_WORDS]
    return WordVocab.of(NODE_WORDS, words, ("?", "yes", "no"))


def graph_prompts(
    num: int,
    *,
    num_nodes: int = 6,
    num_edges: int = 6,
    encoding: str = "edge_list",
    query: bool = False,
    seed: int = 0,
) -> list[GraphPrompt]:
    """``num`` random graphs (``num_edges`` distinct edges in random order, node names shuffled)
    written in ``encoding``; with ``query``, each ends in ``? u v`` whose answer is adjacent in half
    of the prompts."""
    num = check_int(num, "num")
    num_nodes = check_int(num_nodes, "num_nodes", minimum=2)
    num_edges = check_int(num_edges, "num_edges")
    if num_nodes > len(NODE_WORDS):
        raise ValueError(f"num_nodes must be <= {len(NODE_WORDS)}, got {num_nodes}")
    pairs = [(u, v) for u in range(num_nodes) for v in range(u + 1, num_nodes)]
    if num_edges >= len(pairs):
        raise ValueError(
            f"num_edges must be < {len(pairs)} (the pairs of {num_nodes} nodes), got {num_edges}"
        )
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        chosen = rng.choice(len(pairs), num_edges, replace=False)
        edges = [pairs[j] for j in chosen]
        words = _encode(edges, num_nodes, encoding)
        q, answer = None, None
        if query:
            pool = edges if i % 2 == 0 else [p for p in pairs if p not in edges]
            u, v = pool[rng.integers(len(pool))]
            q, answer = ((u, v) if rng.random() < 0.5 else (v, u)), ("yes" if i % 2 == 0 else "no")
            words = [*words, "?", str(q[0]), str(q[1])]
        node_at = [int(w) if w in NODE_WORDS else -1 for w in words]
        out.append(GraphPrompt(num_nodes, edges, encoding, words, node_at, q, answer))
    return out


def graph_task_data(
    num_train: int,
    num_test: int,
    *,
    encodings: Sequence[str] = ENCODINGS,
    num_nodes: int = 6,
    num_edges: int = 6,
    seed: int = 0,
) -> TaskData:
    """The edge-query task for a causal LM: graphs in every encoding of ``encodings`` (equal
    shares), each ending in ``? u v``, scored on the next token (``yes``/``no``); right-padded."""
    vocab = graph_vocab()

    def split(num: int, offset: int) -> dict[str, torch.Tensor]:
        per = [
            graph_prompts(num // len(encodings), num_nodes=num_nodes, num_edges=num_edges, encoding=e,
                          query=True, seed=seed + offset + k)
            for k, e in enumerate(encodings)
        ]  # fmt: skip
        prompts = [p for group in per for p in group]
        n = max(len(p.words) for p in prompts)
        tokens = torch.full((len(prompts), n), vocab.pad_id, dtype=torch.long)
        targets = torch.full_like(tokens, IGNORE)
        for i, p in enumerate(prompts):
            tokens[i, : len(p.words)] = torch.tensor(vocab.encode(p.words))
            targets[i, len(p.words) - 1] = vocab.index[p.answer]
        return {"tokens": tokens, "targets": targets}

    train, test = split(num_train, 0), split(num_test, 1000)
    if train["tokens"].shape[1] != test["tokens"].shape[1]:
        width = max(train["tokens"].shape[1], test["tokens"].shape[1])
        for part in (train, test):
            pad = width - part["tokens"].shape[1]
            part["tokens"] = torch.nn.functional.pad(part["tokens"], (0, pad), value=vocab.pad_id)
            part["targets"] = torch.nn.functional.pad(part["targets"], (0, pad), value=IGNORE)
    return TaskData(
        "graph_edge_query", "sequence", train, test,
        meta={"vocab_size": len(vocab), "seq_len": train["tokens"].shape[1], "chance": 0.5},
        config={"encodings": list(encodings), "num_nodes": num_nodes, "num_edges": num_edges,
                "num_train": num_train, "num_test": num_test, "seed": seed},
    )  # fmt: skip


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    return (ends - (counts - 1) / 2.0)[inverse]


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.numel() < 3:
        return float("nan")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float((rx.square().sum() * ry.square().sum()).sqrt())
    return float((rx * ry).sum()) / denom if denom > 0 else float("nan")


def graph_attention_metrics(
    probs: torch.Tensor,
    node_at: torch.Tensor,
    prompts: Sequence[GraphPrompt],
    mask: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per head, where the node tokens' attention goes.

    Args:
        probs: ``(B, h, N, N)`` attention probabilities of one layer.
        node_at: ``(B, N)`` long, the node each token mentions, -1 for other tokens and padding.
        prompts: the ``B`` graphs.
        mask: ``(B, N)`` bool, real tokens (default all).
        allowed: ``(B, N, N)`` bool, the keys each query may attend to (e.g. the causal mask a
            capture records); default: every real token.

    Returns:
        ``{"neighbour", "self", "other_node", "rest": (h,)`` mean attention shares over node-mention
        queries, ``"lift": (h,)``, ``"distance_corr": (h,)``, ``"token_distance_corr": (h,)}``.
    """
    b, h, n, _ = probs.shape
    if node_at.shape != (b, n) or len(prompts) != b:
        raise ValueError(f"node_at must be (B, N) = ({b}, {n}) with one prompt per row")
    mask = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    allowed = mask[:, None, :].expand(b, n, n) if allowed is None else allowed & mask[:, None, :]
    p = probs.double() * mask[:, None, None, :]
    shares = {c: torch.zeros(h, dtype=torch.float64) for c in CLASSES}
    lifts: list[torch.Tensor] = []
    att, gdist, tdist = [], [], []
    queries = 0
    for i, prompt in enumerate(prompts):
        adj, dist = prompt.adjacency(), prompt.distances()
        nodes = node_at[i]
        is_node = (nodes >= 0) & mask[i]
        safe = nodes.clamp_min(0)
        for t in is_node.nonzero().flatten().tolist():
            u = int(nodes[t])
            nb = is_node & adj[u][safe]
            same = is_node & (nodes == u)
            other = is_node & ~nb & ~same
            row = p[i, :, t]  # (h, N)
            shares["neighbour"] += row[:, nb].sum(-1)
            shares["self"] += row[:, same].sum(-1)
            shares["other_node"] += row[:, other].sum(-1)
            shares["rest"] += row[:, ~is_node].sum(-1)
            keys_ok = allowed[i, t]
            nb_a, other_a = nb & keys_ok, other & keys_ok
            if nb_a.any() and other_a.any():
                lifts.append((row[:, nb_a].mean(-1) + 1e-12) / (row[:, other_a].mean(-1) + 1e-12))
            keys = (is_node & ~same & keys_ok).nonzero().flatten()
            d = dist[u, safe[keys]]
            finite = torch.isfinite(d)
            att.append(row[:, keys[finite]])
            gdist.append(d[finite])
            tdist.append((keys[finite] - t).abs().double())
            queries += 1
    if queries == 0:
        raise ValueError("no token mentions a node: node_at is -1 everywhere")
    out = {c: (v / queries).float() for c, v in shares.items()}
    out["lift"] = torch.stack(lifts).log().mean(0).exp().float() if lifts else torch.full((h,), float("nan"))
    a, g, td = torch.cat(att, -1), torch.cat(gdist), torch.cat(tdist)
    out["distance_corr"] = torch.tensor([_spearman(a[k], g) for k in range(h)])
    out["token_distance_corr"] = torch.tensor([_spearman(a[k], td) for k in range(h)])
    return out


def _tokenize(prompts: Sequence[GraphPrompt], tokenizer: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs and the ``(B, N)`` node of every token."""
    if isinstance(tokenizer, WordVocab):
        n = max(len(p.words) for p in prompts)
        ids = torch.full((len(prompts), n), tokenizer.pad_id, dtype=torch.long)
        node_at = torch.full((len(prompts), n), -1, dtype=torch.long)
        mask = torch.zeros(len(prompts), n, dtype=torch.bool)
        for i, p in enumerate(prompts):
            ids[i, : len(p.words)] = torch.tensor(tokenizer.encode(p.words))
            node_at[i, : len(p.words)] = torch.tensor(p.node_at)
            mask[i, : len(p.words)] = True
        return {"tokens": ids, "attention_mask": mask}, node_at
    batch = tokenizer([p.words for p in prompts], is_split_into_words=True, padding=True, return_tensors="pt")
    node_at = torch.full(batch["input_ids"].shape, -1, dtype=torch.long)
    for i, p in enumerate(prompts):
        for t, w in enumerate(batch.word_ids(i)):
            if w is not None:
                node_at[i, t] = p.node_at[w]
    return dict(batch), node_at


def _batch_metrics(
    model: nn.Module, chunk: list[GraphPrompt], tokenizer: Any
) -> dict[str, dict[str, torch.Tensor]]:
    inputs, node_at = _tokenize(chunk, tokenizer)
    mask = inputs["attention_mask"].bool()
    with torch.no_grad(), capture(model) as cap:
        if "tokens" in inputs:
            model(inputs["tokens"])
        else:
            model(**inputs)
    if not cap.records:
        raise RuntimeError(
            f"{type(model).__name__} recorded no attention: graph_attention needs attention "
            "probabilities (attnzoo softmax mechanisms, or transformers eager / attnzoo_* attention)"
        )
    out = {}
    for name in cap.names():
        rec = cap[name][0]
        n = rec.probs.shape[-1]
        allowed = None if rec.mask is None else rec.mask.expand(len(chunk), 1, n, n)[:, 0]
        out[name] = graph_attention_metrics(rec.probs, node_at, chunk, mask, allowed)
    return out


def graph_attention(
    model: nn.Module, prompts: Sequence[GraphPrompt], tokenizer: Any, *, batch_size: int = 32
) -> list[dict[str, Any]]:
    """Capture ``model`` on ``prompts`` and measure :func:`graph_attention_metrics` per layer.

    Args:
        model: an attnzoo model called on token ids ``(B, N)`` (e.g. :class:`~attnzoo.models.CausalLM`,
            with ``tokenizer`` a :class:`WordVocab`), or a ``transformers`` model with eager or
            ``attnzoo_*`` attention and a fast tokenizer (node mentions are found by ``word_ids``).
        batch_size: prompts per forward pass.

    Returns:
        per layer ``{"layer", "name", metric: [per-head values]}``: every metric of
        :func:`graph_attention_metrics` per batch, averaged over batches weighted by their prompts.

    Raises:
        RuntimeError: the capture recorded no attention (the model forms no attention matrix
            attnzoo can record; see :func:`attnzoo.capture`).
    """
    if not prompts:
        raise ValueError("prompts is empty")
    batch_size = check_int(batch_size, "batch_size")
    per_layer: dict[str, list[tuple[int, dict[str, torch.Tensor]]]] = {}
    was = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            for name, metrics in _batch_metrics(model, chunk, tokenizer).items():
                per_layer.setdefault(name, []).append((len(chunk), metrics))
    finally:
        model.train(was)
    out = []
    for i, (name, parts) in enumerate(per_layer.items()):
        total = sum(k for k, _ in parts)
        row: dict[str, Any] = {"layer": i, "name": name}
        for key in parts[0][1]:
            stacked = torch.stack([m[key] * k for k, m in parts]).sum(0) / total
            row[key] = [round(float(v), 5) for v in stacked]
        out.append(row)
    return out


register_metric(
    MetricCard(
        name="graph_attention",
        summary="Where node tokens attend in a graph written as text: neighbours, self, other nodes, rest.",
        definition="for a query token mentioning node u: share to mentions of N(u), of u, of other nodes, "
        "of non-node tokens; lift = geometric mean over queries of (mean attention per neighbour token) / "
        "(mean attention per other-node token); distance_corr = Spearman(attention, hop distance) over "
        "the mentions of other nodes",
        paper="Guan et al., Attention Mechanisms Perspective: Exploring LLM Processing of Graph-Structured "
        "Data (ICML 2025)",
        arxiv="2505.02130",
        output="per layer {metric: (h,)}",
        fn=graph_attention,
        defaults=MappingProxyType({"num_nodes": 6, "num_edges": 6, "encodings": ENCODINGS}),
        notes=(
            "Guan et al. study LLaMA-scale models on node-classification graphs with text attributes; "
            "attnzoo writes small random graphs with single-token node names, so the numbers measure the "
            "same question on a toy scale.",
            "The encodings follow Fatemi et al. (Talk like a Graph, 2023); the token-distance correlation "
            "is attnzoo's addition, to separate topology from position (an edge list puts neighbours next "
            "to each other).",
            "Causal models: only earlier tokens can be attended, so lift and correlations use the keys "
            "each query may attend to.",
        ),
    )
)
