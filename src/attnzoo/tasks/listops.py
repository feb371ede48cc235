"""Mini-ListOps: the Long Range Arena ListOps grammar (Tay et al., 2021, arXiv:2011.04006; Nangia &
Bowman, 2018) with shorter sequences.

A tree is drawn recursively: below ``max_depth`` a node is an operator with probability 0.25
(else a digit 0-9); an operator takes ``U{2..max_args}`` arguments and is one of ``[MIN``,
``[MAX``, ``[MED`` (median, truncated to an int) and ``[SM`` (sum mod 10); it is written
``[OP a1 ... an ]``. Trees whose token count lies outside ``[min_len, max_len]`` are redrawn (as
LRA does). The answer is the value of the root, a digit. LRA's parentheses from its binary-tree
printing carry no information and are left out.

For a causal LM each expression is followed by an ``=`` token whose target is the answer and
then right-padded, so padding never influences the prediction.
"""

from __future__ import annotations

import random
import statistics

import torch

from attnzoo.tasks.data import IGNORE

__all__ = ["LISTOPS_VOCAB", "evaluate_listops", "listops"]

LISTOPS_VOCAB: tuple[str, ...] = (
    "<pad>",
    *(str(d) for d in range(10)),
    "[MIN",
    "[MAX",
    "[MED",
    "[SM",
    "]",
    "=",
)
"""Token strings by id."""

_ID = {t: i for i, t in enumerate(LISTOPS_VOCAB)}
_OPS = ("[MIN", "[MAX", "[MED", "[SM")
_VALUE_P = 0.25


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> list[str]:
    if depth >= max_depth or rng.random() > _VALUE_P:
        return [str(rng.randrange(10))]
    n_args = rng.randint(2, max_args)
    args = [t for _ in range(n_args) for t in _tree(rng, depth + 1, max_depth, max_args)]
    return [rng.choice(_OPS), *args, "]"]


def evaluate_listops(tokens: list[str]) -> int:
    """Value of an expression given as token strings (e.g. ``["[MAX", "2", "9", "]"]`` -> 9)."""
    stack: list[list[str | int]] = [[]]
    for tok in tokens:
        if tok in _OPS:
            stack.append([tok])
        elif tok == "]":
            op, *vals = stack.pop()
            ints = [int(v) for v in vals]
            if op == "[MIN":
                value = min(ints)
            elif op == "[MAX":
                value = max(ints)
            elif op == "[MED":
                value = int(statistics.median(ints))
            else:
                value = sum(ints) % 10
            stack[-1].append(value)
        else:
            stack[-1].append(int(tok))
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ValueError(f"malformed ListOps expression: {' '.join(tokens)}")
    return int(stack[0][0])


def listops(
    num_examples: int,
    *,
    min_len: int,
    max_len: int,
    max_depth: int,
    max_args: int,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens (S, max_len + 1)`` (expression, ``=``, padding) and ``targets`` scoring the ``=``.

    Raises:
        ValueError: for ``min_len > max_len``, ``max_args < 2`` or non-positive sizes.
    """
    for name, value in (("num_examples", num_examples), ("max_len", max_len), ("max_depth", max_depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if max_args < 2:
        raise ValueError(f"max_args must be >= 2, got {max_args}")
    rng = random.Random(seed)
    tokens = torch.zeros(num_examples, max_len + 1, dtype=torch.long)
    targets = torch.full_like(tokens, IGNORE)
    made = 0
    while made < num_examples:
        expr = _tree(rng, 1, max_depth, max_args)
        if not min_len <= len(expr) <= max_len:
            continue
        n = len(expr)
        tokens[made, :n] = torch.tensor([_ID[t] for t in expr])
        tokens[made, n] = _ID["="]
        targets[made, n] = _ID[str(evaluate_listops(expr))]
        made += 1
    return tokens, targets
