"""Task data containers shared by the generators and the training runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = ["IGNORE", "SPLITS", "Split", "TaskData"]

IGNORE = -100
"""Target value of a position that is not scored (as in PyTorch's ``cross_entropy``)."""

Split = dict[str, torch.Tensor]

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Names of a task's splits."""


@dataclass
class TaskData:
    """A generated task: a train, a validation and a test split of aligned tensors.

    ``kind`` fixes the tensors of each split:

    - ``"sequence"``: ``tokens (S, N) int64`` and ``targets (S, N) int64`` with :data:`IGNORE` at
      positions that are not scored (next-token targets for a causal LM);
    - ``"image"``: ``images (S, C, H, W) float`` and ``labels (S,) int64``;
    - ``"mil"``: ``bags (S, M, C, H, W) float``, ``mask (S, M) bool`` (True = real instance) and
      ``labels (S,) int64`` (bag labels, 0/1).

    Attributes:
        name: task name.
        kind: see above.
        train / test: the splits.
        meta: sizes the backbone needs (``vocab_size``, ``seq_len``, ``num_classes``, ...).
        config: the generator arguments (recorded in results so a run can be repeated).
        val: the validation split, which chooses learning rates and checkpoints in ``attnzoo eval``
            (``None`` for data made elsewhere without one; :func:`attnzoo.tasks.train_one` needs it).
    """

    name: str
    kind: Literal["sequence", "image", "mil"]
    train: Split
    test: Split
    meta: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    val: Split | None = None

    def __post_init__(self) -> None:
        for split_name in SPLITS:
            split = getattr(self, split_name)
            if split is None:
                continue
            lengths = {k: v.shape[0] for k, v in split.items()}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"{self.name} {split_name} split has misaligned tensors: {lengths}")

    def split(self, name: str) -> Split:
        """The tensors of split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        tensors = getattr(self, name)
        if tensors is None:
            raise ValueError(f"split 'val': task data {self.name!r} has no validation split")
        return tensors

    def size(self, split: str) -> int:
        """Number of examples in ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        return next(iter(self.split(split).values())).shape[0]
