"""Seeded template tasks with contrast pairs for circuit analysis, and a word-level vocabulary.

A :class:`ContrastPrompts` holds a *clean* and a *corrupted* version of every prompt (same length,
token for token), the positions whose next-token logits are scored, the token each clean prompt
should predict there (``correct``) and the counterfactual one (``wrong``); patching metrics compare
them as a logit difference. The generators:

* :func:`ioi_prompts` — an IOI-like task (Wang et al., "Interpretability in the Wild", 2022,
  arXiv 2211.00593): ``when {A} and {B} went to the {place} , {S} gave a {object} to`` -> the
  indirect object (the name that is not repeated). ABBA and BABA orders; ``wrong`` is the subject.
  The corruption is Wang et al.'s ABC distribution: the three names replaced by three other ones.
* :func:`colored_objects_prompts` — a colored-objects-like task (BIG-bench "reasoning about colored
  objects", as Merullo et al. 2023 use it): ``i see a {c1} {o1} , a {c2} {o2} and a {c3} {o3} .
  what color is the {oq}`` -> the color of the queried object. The corruption queries another object of the
  list, whose color is ``wrong``.

Each template has one length, so a batch of one task needs no padding; :func:`training_data` pads
a mixture of tasks on the right (harmless for a causal LM: no position attends to later ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from attnzoo.checks import check_int
from attnzoo.tasks.data import IGNORE, TaskData

__all__ = [
    "COLORS",
    "NAMES",
    "OBJECTS",
    "ContrastPrompts",
    "WordVocab",
    "colored_objects_prompts",
    "ioi_prompts",
    "training_data",
]

NAMES = ("mary", "john", "anna", "tom", "lisa", "paul", "kate", "mark", "emma", "james")
PLACES = ("store", "park", "office", "school")
GIFTS = ("drink", "book", "ring", "ball")
IOI_TEMPLATES = (
    ("when", "{A}", "and", "{B}", "went", "to", "the", "{place}", ",", "{S}", "gave", "a", "{gift}", "to"),
    ("after", "{A}", "and", "{B}", "went", "to", "the", "{place}", ",", "{S}", "handed", "a", "{gift}", "to"),
    ("while", "{A}", "and", "{B}", "were", "at", "the", "{place}", ",", "{S}", "threw", "a", "{gift}", "to"),
)
COLORS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
OBJECTS = ("pen", "cup", "key", "hat", "box", "lamp", "shoe", "book")
CO_TEMPLATE = (
    "i", "see", "a", "{c1}", "{o1}", ",", "a", "{c2}", "{o2}", "and", "a", "{c3}", "{o3}", ".",
    "what", "color", "is", "the", "{oq}",
)  # fmt: skip
PAD = "<pad>"


@dataclass(frozen=True)
class WordVocab:
    """A word-level vocabulary: one token per word, ``<pad>`` first."""

    words: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.words)) != len(self.words):
            raise ValueError("WordVocab words must be distinct")
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.words)})

    @classmethod
    def of(cls, *groups: Iterable[str]) -> WordVocab:
        """The vocabulary of ``<pad>`` then every word of ``groups`` (first occurrence order)."""
        return cls(tuple(dict.fromkeys([PAD, *(w for g in groups for w in g)])))

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: Sequence[str]) -> list[int]:
        missing = [w for w in words if w not in self.index]
        if missing:
            raise KeyError(f"words not in the vocabulary: {sorted(set(missing))}")
        return [self.index[w] for w in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[int(i)] for i in ids]


def default_vocab() -> WordVocab:
    """The vocabulary of both template tasks (and of the digits ``0``-``9``, ``+``, ``=``)."""
    words = [w for t in (*IOI_TEMPLATES, CO_TEMPLATE) for w in t if not w.startswith("{")]
    return WordVocab.of(NAMES, PLACES, GIFTS, COLORS, OBJECTS, words, map(str, range(10)), ("+", "="))


@dataclass
class ContrastPrompts:
    """Clean/corrupted prompt pairs and what to score.

    Attributes:
        name: task name.
        clean / corrupt: ``(S, N)`` int64 token ids, same length.
        positions: ``(S, P)`` positions whose next-token logits are scored.
        correct: ``(S, P)`` the token the clean prompt should predict there.
        wrong: ``(S, P)`` the counterfactual token (distractor, or the corrupted prompt's answer).
        valid: ``(S, P)`` bool, which of the P scored positions count (e.g. answer digits that
            differ between the clean and the corrupted prompt).
        roles: ``{role: (S,) positions}`` of named template slots (``"IO"``, ``"S1"``, ``"END"``...).
    """

    name: str
    clean: torch.Tensor
    corrupt: torch.Tensor
    positions: torch.Tensor
    correct: torch.Tensor
    wrong: torch.Tensor
    valid: torch.Tensor
    roles: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupt.shape or self.clean.ndim != 2:
            raise ValueError(
                f"clean {tuple(self.clean.shape)} and corrupt {tuple(self.corrupt.shape)} must both be (S, N)"
            )
        s = self.clean.shape[0]
        for key in ("positions", "correct", "wrong", "valid"):
            t = getattr(self, key)
            if t.ndim != 2 or t.shape != self.positions.shape or t.shape[0] != s:
                raise ValueError(
                    f"{key} must have shape (S, P) = ({s}, P) like positions, got {tuple(t.shape)}"
                )
        if not bool(self.valid.any(-1).all()):
            raise ValueError(f"{self.name}: every prompt needs at least one valid scored position")

    def __len__(self) -> int:
        return self.clean.shape[0]

    def subset(self, idx: torch.Tensor | slice) -> ContrastPrompts:
        """The prompts ``idx`` (an index tensor or a slice)."""
        return ContrastPrompts(
            self.name,
            self.clean[idx],
            self.corrupt[idx],
            self.positions[idx],
            self.correct[idx],
            self.wrong[idx],
            self.valid[idx],
            {k: v[idx] for k, v in self.roles.items()},
        )


def _distinct(rng: np.random.Generator, rows: int, population: int, k: int) -> np.ndarray:
    """``(rows, k)`` distinct draws from ``range(population)`` per row."""
    return np.argsort(rng.random((rows, population)), axis=1)[:, :k]


def _fill(template: Sequence[str], slots: dict[str, str]) -> list[str]:
    return [slots[w[1:-1]] if w.startswith("{") else w for w in template]


def ioi_prompts(num: int, *, vocab: WordVocab | None = None, seed: int = 0) -> ContrastPrompts:
    """``num`` IOI-like prompts (half ABBA, half BABA, random template, place and gift)."""
    num = check_int(num, "num")
    vocab = vocab or default_vocab()
    rng = np.random.default_rng(seed)
    names = _distinct(rng, num, len(NAMES), 5)  # IO, S, then the three ABC replacements
    templates = rng.integers(0, len(IOI_TEMPLATES), num)
    places = rng.integers(0, len(PLACES), num)
    gifts = rng.integers(0, len(GIFTS), num)
    baba = np.arange(num) % 2 == 1
    clean, corrupt, io_pos, s1_pos = [], [], [], []
    for i in range(num):
        io, s, x, y, z = (NAMES[j] for j in names[i])
        a, b = (s, io) if baba[i] else (io, s)
        rest = {"place": PLACES[places[i]], "gift": GIFTS[gifts[i]]}
        template = IOI_TEMPLATES[templates[i]]
        clean.append(vocab.encode(_fill(template, {"A": a, "B": b, "S": s, **rest})))
        corrupt.append(vocab.encode(_fill(template, {"A": x, "B": y, "S": z, **rest})))
        first, second = template.index("{A}"), template.index("{B}")
        io_pos.append(second if baba[i] else first)
        s1_pos.append(first if baba[i] else second)
    clean_t = torch.tensor(clean)
    n = clean_t.shape[1]
    end = torch.full((num, 1), n - 1)
    io_ids = torch.tensor([vocab.index[NAMES[j]] for j in names[:, 0]]).unsqueeze(1)
    s_ids = torch.tensor([vocab.index[NAMES[j]] for j in names[:, 1]]).unsqueeze(1)
    roles = {
        "IO": torch.tensor(io_pos),
        "S1": torch.tensor(s1_pos),
        "S2": torch.full((num,), IOI_TEMPLATES[0].index("{S}")),
        "END": end[:, 0],
    }
    ones = torch.ones(num, 1, dtype=torch.bool)
    return ContrastPrompts("ioi", clean_t, torch.tensor(corrupt), end, io_ids, s_ids, ones, roles)


def colored_objects_prompts(num: int, *, vocab: WordVocab | None = None, seed: int = 0) -> ContrastPrompts:
    """``num`` colored-objects-like prompts (three distinct colors and objects, one queried)."""
    num = check_int(num, "num")
    vocab = vocab or default_vocab()
    rng = np.random.default_rng(seed)
    colors = _distinct(rng, num, len(COLORS), 3)
    objects = _distinct(rng, num, len(OBJECTS), 3)
    query = rng.integers(0, 3, num)
    other = (query + rng.integers(1, 3, num)) % 3
    clean, corrupt = [], []
    for i in range(num):
        slots = {f"c{j + 1}": COLORS[colors[i, j]] for j in range(3)}
        slots |= {f"o{j + 1}": OBJECTS[objects[i, j]] for j in range(3)}
        clean.append(vocab.encode(_fill(CO_TEMPLATE, {**slots, "oq": OBJECTS[objects[i, query[i]]]})))
        corrupt.append(vocab.encode(_fill(CO_TEMPLATE, {**slots, "oq": OBJECTS[objects[i, other[i]]]})))
    clean_t = torch.tensor(clean)
    n = clean_t.shape[1]
    end = torch.full((num, 1), n - 1)
    rows = np.arange(num)
    correct = torch.tensor([vocab.index[COLORS[c]] for c in colors[rows, query]]).unsqueeze(1)
    wrong = torch.tensor([vocab.index[COLORS[c]] for c in colors[rows, other]]).unsqueeze(1)
    object_pos = torch.tensor([CO_TEMPLATE.index(f"{{o{j + 1}}}") for j in range(3)])
    roles = {
        "answer_object": object_pos[torch.from_numpy(query)],
        "other_object": object_pos[torch.from_numpy(other)],
        "query": torch.full((num,), CO_TEMPLATE.index("{oq}")),
        "END": end[:, 0],
    }
    ones = torch.ones(num, 1, dtype=torch.bool)
    return ContrastPrompts(
        "colored_objects", clean_t, torch.tensor(corrupt), end, correct, wrong, ones, roles
    )


def training_data(
    train: Sequence[ContrastPrompts],
    test: Sequence[ContrastPrompts],
    *,
    vocab: WordVocab,
    name: str = "templates",
) -> TaskData:
    """A :class:`~attnzoo.tasks.data.TaskData` (kind ``"sequence"``) of the clean prompts: the
    target at every scored position is its ``correct`` token (:data:`IGNORE` elsewhere); tasks of
    different lengths are padded on the right with ``<pad>``."""
    if not train or not test:
        raise ValueError("training_data needs at least one task in train and in test")
    length = max(p.clean.shape[1] for p in (*train, *test))

    def split(tasks: Sequence[ContrastPrompts]) -> dict[str, torch.Tensor]:
        tokens, targets = [], []
        for p in tasks:
            tok = torch.full((len(p), length), vocab.pad_id, dtype=torch.long)
            tok[:, : p.clean.shape[1]] = p.clean
            tgt = torch.full_like(tok, IGNORE)
            tgt.scatter_(1, p.positions, p.correct)
            tokens.append(tok)
            targets.append(tgt)
        return {"tokens": torch.cat(tokens), "targets": torch.cat(targets)}

    return TaskData(
        name,
        "sequence",
        split(train),
        split(test),
        meta={"vocab_size": len(vocab), "seq_len": length},
        config={"tasks": [p.name for p in train], "num_train": sum(map(len, train))},
    )
