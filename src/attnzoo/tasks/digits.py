"""Image tasks on scikit-learn's 8x8 handwritten digits (1,797 real images shipped inside the
package, UCI ML optical recognition of handwritten digits): classification, and MIL bags.

The train/test split is fixed (stratified: 25 % of each class in the test set, drawn with
``numpy.random.RandomState(0)``) whatever the training seed, so results of different runs are
comparable. Pixels are scaled from ``[0, 16]`` to
``[0, 1]``. A validation split is held out of the training split, also fixed whatever the seed
(:func:`digits_holdout`: a random 20 % drawn with ``torch.Generator().manual_seed(20210621)``, the
hold-out :mod:`attnzoo.training.demo` makes), so the test split is never used to choose anything.

:func:`digit_bags` follows Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance
Learning" (ICML 2018, arXiv:1802.04712): a bag's size is ``round-down(Normal(mean, std))``
(at least 1), its instances are drawn at random from the split, and it is positive iff it
contains the target digit (9).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = ["VAL_FRACTION", "VAL_SEED", "digit_bags", "digits_holdout", "digits_split"]

VAL_FRACTION = 0.2
"""Share of the training split held out for validation."""
VAL_SEED = 20210621
"""Seed of the permutation that picks the validation images (the same whatever the run's seed)."""


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the CSV that scikit-learn ships (without importing scikit-learn, which is slow) and
    split it: per class, a fixed permutation (``RandomState(0)``) puts 25 % in the test set."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the digits tasks need scikit-learn (pip install scikit-learn)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images = (raw[:, :64] / 16.0).reshape(-1, 1, 8, 8)
    labels = raw[:, 64].astype(np.int64)
    rng = np.random.RandomState(0)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: round(0.25 * len(idx))]] = True
    train_idx = rng.permutation(np.flatnonzero(~test))
    test_idx = rng.permutation(np.flatnonzero(test))
    return images[train_idx], images[test_idx], labels[train_idx], labels[test_idx]


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train (1347, 1, 8, 8), x_test (450, 1, 8, 8), y_train, y_test)``, the fixed split."""
    return tuple(torch.from_numpy(a.copy()) for a in _load())  # type: ignore[return-value]


def digits_holdout() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_fit (1078, 1, 8, 8), x_val (269, 1, 8, 8), y_fit, y_val)``: the training split of
    :func:`digits_split` cut in two by a fixed permutation (:data:`VAL_SEED`), its first
    ``round(VAL_FRACTION * 1347)`` images held out for validation, the rest (in permutation order)
    trained on."""
    x_train, _, y_train, _ = digits_split()
    order = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(VAL_SEED))
    n_val = round(VAL_FRACTION * x_train.shape[0])
    val, fit = order[:n_val], order[n_val:]
    return x_train[fit], x_train[val], y_train[fit], y_train[val]


def digit_bags(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_bags: int,
    *,
    mean_bag_size: float = 10.0,
    std_bag_size: float = 2.0,
    target: int = 9,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ilse et al.'s MNIST-bags built from ``images``/``labels`` (one split, so bags never mix splits).

    Returns:
        ``bags (num_bags, M, C, H, W)`` zero-padded to the largest bag ``M``, ``mask
        (num_bags, M)`` True for real instances, ``bag_labels (num_bags,)`` 0/1 and
        ``instance_labels (num_bags, M)`` (-1 on padding).
    """
    if isinstance(num_bags, bool) or not isinstance(num_bags, int) or num_bags <= 0:
        raise ValueError(f"num_bags must be a positive int, got {num_bags!r}")
    if not (mean_bag_size >= 1 and std_bag_size >= 0):
        raise ValueError(
            f"need mean_bag_size >= 1 and std_bag_size >= 0, got {mean_bag_size}, {std_bag_size}"
        )
    rng = np.random.default_rng(seed)
    sizes = np.maximum(1, rng.normal(mean_bag_size, std_bag_size, size=num_bags).astype(np.int64))
    m = int(sizes.max())
    bags = torch.zeros(num_bags, m, *images.shape[1:], dtype=images.dtype)
    mask = torch.zeros(num_bags, m, dtype=torch.bool)
    inst = torch.full((num_bags, m), -1, dtype=torch.long)
    for i, size in enumerate(sizes.tolist()):
        idx = torch.from_numpy(rng.integers(0, images.shape[0], size=size))
        bags[i, :size] = images[idx]
        mask[i, :size] = True
        inst[i, :size] = labels[idx]
    bag_labels = (inst == target).any(dim=1).long()
    return bags, mask, bag_labels, inst
