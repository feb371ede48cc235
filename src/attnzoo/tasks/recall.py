"""Synthetic recall tasks for causal LMs: MQAR, associative recall, induction heads, selective copying.

All generators are seeded (:class:`numpy.random.Generator`), download nothing and return
``(tokens (S, N), targets (S, N))`` with next-token targets and :data:`~attnzoo.tasks.data.IGNORE`
at positions that are not scored.

- :func:`multiquery_ar` is MQAR exactly as Zoology (Arora, Eyuboglu et al., "Zoology: Measuring
  and improving recall in efficient language models", 2023, arXiv:2312.04927) defines it: keys
  from ``[1, V/2)``, values from ``[V/2, V)``; all key-value pairs first; then each key queried
  once, at even offsets ``2 g`` of the query region with gaps ``g`` drawn without replacement
  from a power law ``p(g) ∝ a (g+1)^(a-1)``; only the query positions are scored, and every
  unused position holds a uniformly random token of the whole vocabulary.
- :func:`associative_recall` and :func:`induction_heads` follow H3 (Fu, Dao et al., "Hungry Hungry
  Hippos", 2023, arXiv:2212.14052) / Mamba (Gu & Dao, 2023, arXiv:2312.00752): the answer is the
  last token; training scores every next token, testing only the answer.
- :func:`selective_copying` is Mamba's: ``k`` data tokens scattered among blank tokens, followed
  by ``k`` marker tokens at which the data tokens must be produced in order.
"""

from __future__ import annotations

import numpy as np
import torch

from attnzoo.tasks.data import IGNORE

__all__ = ["associative_recall", "induction_heads", "multiquery_ar", "selective_copying"]


def _positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _sample_rows(
    rng: np.random.Generator, rows: int, population: int, k: int, p: np.ndarray | None = None
) -> np.ndarray:
    """``rows`` independent draws of ``k`` distinct items of ``range(population)``, each draw
    taking items one by one with probability proportional to ``p`` among those left (uniform when
    ``p`` is None), i.e. ``rng.choice(population, k, replace=False, p=p)``, vectorised with the
    Gumbel-top-k trick, in row chunks to bound memory."""
    logp = np.zeros(population) if p is None else np.log(np.maximum(p, np.finfo(np.float64).tiny))
    out = np.empty((rows, k), dtype=np.int64)
    chunk = max(1, 2**22 // max(1, population))
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        scores = logp + rng.gumbel(size=(stop - start, population))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start:stop] = np.take_along_axis(top, order, axis=1)
    return out


def multiquery_ar(
    num_examples: int,
    *,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoology's multi-query associative recall.

    Returns ``tokens (S, seq_len)`` and ``targets (S, seq_len)`` where ``targets[s, t]`` is the
    value to predict *at* position ``t`` (the query key's position), :data:`IGNORE` elsewhere.

    Raises:
        ValueError: ``seq_len`` odd, ``vocab_size <= seq_len`` or ``4 * num_kv_pairs > seq_len``
            (Zoology's preconditions), or non-positive sizes.
    """
    _positive(num_examples=num_examples, vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs)
    if seq_len % 2:
        raise ValueError(f"seq_len must be even, got {seq_len}")
    if vocab_size <= seq_len:
        raise ValueError(f"vocab_size must exceed seq_len, got vocab_size={vocab_size}, seq_len={seq_len}")
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(f"4 * num_kv_pairs must be <= seq_len, got num_kv_pairs={num_kv_pairs}")
    if not power_a > 0:
        raise ValueError(f"power_a must be > 0, got {power_a}")
    rng = np.random.default_rng(seed)
    half = vocab_size // 2
    keys = 1 + _sample_rows(rng, num_examples, half - 1, num_kv_pairs)
    values = half + _sample_rows(rng, num_examples, vocab_size - half, num_kv_pairs)
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    gaps = _sample_rows(rng, num_examples, space, num_kv_pairs, p=p / p.sum())

    tokens = np.zeros((num_examples, seq_len), dtype=np.int64)
    tokens[:, 0:context:2] = keys
    tokens[:, 1:context:2] = values
    query_pos = context + 2 * gaps
    np.put_along_axis(tokens, query_pos, keys, axis=1)
    targets = np.full((num_examples, seq_len), IGNORE, dtype=np.int64)
    np.put_along_axis(targets, query_pos, values, axis=1)
    if random_non_queries:
        empty = tokens == 0
        tokens[empty] = rng.integers(0, vocab_size, size=int(empty.sum()))
    return torch.from_numpy(tokens), torch.from_numpy(targets)


def _lm_split(seqs: np.ndarray, answer_len: int, score_all: bool) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(seqs[:, :-1].copy())
    targets = torch.from_numpy(seqs[:, 1:].copy())
    if not score_all:
        targets[:, : targets.shape[1] - answer_len] = IGNORE
    return tokens, targets


def associative_recall(
    num_examples: int,
    *,
    vocab_size: int,
    seq_len: int,
    score_all: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """H3's associative recall (one-token keys): ``k1 v1 ... k_n v_n => k ? -> v``.

    The vocabulary is ``vocab_size - 2`` ordinary tokens (keys: the lower half, values: the upper
    half) plus the ``=>`` and no-op tokens (ids ``vocab_size - 2`` and ``vocab_size - 1``). Every
    example draws its own key-to-value map; ``seq_len // 2`` pairs are drawn with repeated keys
    allowed, and the query key is drawn uniformly from the distinct keys that occur. The returned
    sequences have length ``2 (seq_len // 2) + 2`` (pairs, ``=>``, query key); the answer is the
    target at the last position.

    Args:
        score_all: score every next token (H3's training loss) instead of only the answer
            (H3's test metric).
    """
    _positive(num_examples=num_examples, vocab_size=vocab_size, seq_len=seq_len)
    ordinary = vocab_size - 2
    if ordinary < 2:
        raise ValueError(f"vocab_size must be >= 4, got {vocab_size}")
    rng = np.random.default_rng(seed)
    n_keys = ordinary // 2
    n_pairs = seq_len // 2
    if n_pairs < 1:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    kv_map = rng.integers(n_keys, ordinary, size=(num_examples, n_keys))
    pair_keys = rng.integers(0, n_keys, size=(num_examples, n_pairs))
    pair_values = np.take_along_axis(kv_map, pair_keys, axis=1)
    query = np.array([[rng.choice(np.unique(row))] for row in pair_keys], dtype=np.int64)
    answer = np.take_along_axis(kv_map, query, axis=1)
    seqs = np.empty((num_examples, 2 * n_pairs + 3), dtype=np.int64)
    seqs[:, 0 : 2 * n_pairs : 2] = pair_keys
    seqs[:, 1 : 2 * n_pairs : 2] = pair_values
    seqs[:, -3] = ordinary
    seqs[:, -2:-1] = query
    seqs[:, -1:] = answer
    return _lm_split(seqs, 1, score_all)


def induction_heads(
    num_examples: int,
    *,
    vocab_size: int,
    seq_len: int,
    score_all: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """H3's induction heads: random tokens with one ``=> b`` inside, ending in ``=>`` -> ``b``.

    ``seq_len`` random ordinary tokens (ids ``< vocab_size - 1``); the special token
    ``vocab_size - 1`` is put at a position ``p`` drawn from ``[0, seq_len - 2)`` and again at the
    end; the answer is the token that followed it at ``p + 1``. Sequences have length
    ``seq_len + 1``; the answer is the target at the last position.

    Args:
        score_all: score every next token (H3's training loss) instead of only the answer.
    """
    _positive(num_examples=num_examples, vocab_size=vocab_size, seq_len=seq_len)
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3, got {vocab_size}")
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3, got {seq_len}")
    rng = np.random.default_rng(seed)
    special = vocab_size - 1
    seqs = rng.integers(0, special, size=(num_examples, seq_len + 2))
    trigger = rng.integers(0, seq_len - 2, size=(num_examples, 1))
    np.put_along_axis(seqs, trigger, special, axis=1)
    seqs[:, seq_len] = special
    seqs[:, seq_len + 1 :] = np.take_along_axis(seqs, trigger + 1, axis=1)
    return _lm_split(seqs, 1, score_all)


def selective_copying(
    num_examples: int,
    *,
    vocab_size: int,
    seq_len: int,
    num_tokens: int,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective copying.

    Token 0 is blank, token 1 the marker, tokens ``2 .. vocab_size - 1`` data. A region of
    ``seq_len`` tokens holds ``num_tokens`` random data tokens at random (sorted, distinct)
    positions and blanks elsewhere; ``num_tokens`` markers follow, and the model must output the
    data tokens in order at the markers. Sequences have length ``seq_len + num_tokens``; only
    the marker positions are scored.
    """
    _positive(num_examples=num_examples, vocab_size=vocab_size, seq_len=seq_len, num_tokens=num_tokens)
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3, got {vocab_size}")
    if num_tokens > seq_len:
        raise ValueError(f"num_tokens must be <= seq_len, got num_tokens={num_tokens}, seq_len={seq_len}")
    rng = np.random.default_rng(seed)
    data = rng.integers(2, vocab_size, size=(num_examples, num_tokens))
    positions = np.sort(_sample_rows(rng, num_examples, seq_len, num_tokens), axis=1)
    tokens = np.zeros((num_examples, seq_len + num_tokens), dtype=np.int64)
    np.put_along_axis(tokens, positions, data, axis=1)
    tokens[:, seq_len:] = 1
    targets = np.full_like(tokens, IGNORE)
    targets[:, seq_len:] = data
    return torch.from_numpy(tokens), torch.from_numpy(targets)
