"""ACT: attention calibration of hidden attention sinks.

Yu, Wang, Fu, Ye, Lin, "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language
Models without Training through Attention Calibration", ICML 2024, arXiv:2406.15765.
Official code: GATECH-EIC/ACT (``models/llama_modelling_aug.py::atten_process_eval``).

For each calibrated head with post-softmax map ``A (N_q, N_k)``:

* sink score ``s_j = sum_i A[i, j] / n_j`` with ``n_j`` the number of queries that can see key
  ``j`` (``N - j`` for a causal square map; 1 for every key at a one-token decode step);
* sinks ``S = {j : s_j > threshold}``; the first (lowest-index) sink is spared (the BOS sink) and
  the rest ``S'`` are calibrated;
* every row ``i``: ``A'[i, j] = beta * A[i, j]`` for ``j in S'`` and the freed mass
  ``(1 - beta) * sum_{j in S'} A[i, j]`` is added to the other keys in proportion to their
  attention, ``A'[i, j] = A[i, j] * (1 + freed_i / sum_{k not in S'} A[i, k])``. Row sums stay 1.
  A row with no mass outside ``S'`` has nowhere to put the freed mass and is left unchanged.

``official_quirks=True`` reproduces the official function exactly: the first row of the map
(``i = 0``; the only row at a one-token decode step) takes its ratios from the whole original row,
sinks included, and then ``A'[0, 0] = 1`` is forced (the row no longer sums to 1 at decode); the
sink normaliser is ``arange(N_q, 0, -1)``, which fails for chunked prefill (``1 < N_q != N_k``);
and only batch element 0 is calibrated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from attnzoo.checks import check_tensor
from attnzoo.inference.hf_edit import ProbEdit, edit_attention, hf_attention_layers

__all__ = ["LEDGER", "ACTCalibration", "act_calibrate_model", "calibrate", "sink_mask", "sink_scores"]

LEDGER = (
    "Decode (one query row): the official code takes the redistribution ratios from the whole "
    "original row (sinks included), so part of the freed mass returns to the sinks, and then forces "
    "A[0, 0] = 1 (row no longer sums to 1); attnzoo renormalises the decode row like any prefill row "
    "(official_quirks=True reproduces the official behaviour).",
    "Prefill row 0: the official code also forces A[0, 0] = 1; for a causal map this is the identity, "
    "attnzoo leaves row 0 to the common formula.",
    "Sink score normaliser: official arange(N_q, 0, -1) (fails for chunked prefill 1 < N_q != N_k); "
    "attnzoo divides by the number of queries that can see each key (identical for N_q in (1, N_k)).",
    "Batch: the official code calibrates batch element 0 only; attnzoo calibrates every element "
    "(official_quirks=True: element 0 only).",
    "Rows with all their mass on calibrated sinks: official divides by zero (NaN); attnzoo leaves "
    "them unchanged.",
    "Heads/layers: the official per-layer head table for Llama-2-7B-chat (layers 2..30) is not shipped; "
    "act_calibrate_model takes {layer: heads} from the caller. The official code mutates the map in "
    "place; attnzoo returns a new tensor.",
)


def _check_probs(probs: torch.Tensor) -> torch.Tensor:
    probs = check_tensor(probs, "probs", ndim=4)
    if probs.shape[-2] > probs.shape[-1]:
        raise ValueError(f"probs must have N_q <= N_k (queries are the last keys), got {tuple(probs.shape)}")
    return probs


def sink_scores(probs: torch.Tensor, *, official_quirks: bool = False) -> torch.Tensor:
    """Per-key sink score ``(B, h, N_k)``: the key's column mass over the queries that can see it.

    Queries are aligned to the last keys (causal with a cache). With ``official_quirks`` the
    normaliser is the official ``arange(N_q, 0, -1)``, defined only for ``N_q in (1, N_k)``.
    """
    probs = _check_probs(probs)
    n_q, n_k = probs.shape[-2:]
    j = torch.arange(n_k, device=probs.device)
    if official_quirks:
        if n_q not in (1, n_k):
            raise ValueError(
                f"official_quirks=True needs a square prefill map or one decode row, got N_q={n_q}, N_k={n_k}"
            )
        count = (n_q - j) if n_q == n_k else torch.ones_like(j)
    else:
        count = n_q - (j - (n_k - n_q)).clamp(min=0)
    return probs.sum(dim=-2) / count.to(probs.dtype)


def sink_mask(
    probs: torch.Tensor, threshold: float, *, official_quirks: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(above, calibrated)``, both bool ``(B, h, N_k)``: keys whose sink score exceeds
    ``threshold``, and the same set without its first (spared) key."""
    above = sink_scores(probs, official_quirks=official_quirks) > threshold
    calibrated = above & (above.cumsum(dim=-1) > 1)
    return above, calibrated


def calibrate(
    probs: torch.Tensor,
    heads: Sequence[int],
    *,
    beta: float = 0.4,
    threshold: float = 0.1,
    official_quirks: bool = False,
) -> torch.Tensor:
    """Calibrated attention map (a new tensor; ``probs`` is not modified).

    Args:
        probs: ``(B, h, N_q, N_k)`` post-softmax attention, queries aligned to the last keys.
        heads: head indices to calibrate; other heads are returned unchanged.
        beta: factor kept on each calibrated sink, in ``[0, 1]``.
        threshold: sink-score threshold.
        official_quirks: reproduce the official first-row / decode behaviour (module docstring).
    """
    probs = _check_probs(probs)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    num_heads = probs.shape[1]
    heads = [int(h) for h in heads]
    if any(not 0 <= h < num_heads for h in heads):
        raise ValueError(f"heads {heads} out of range for a map with {num_heads} heads")
    _, calib = sink_mask(probs, threshold, official_quirks=official_quirks)
    calib = calib.unsqueeze(-2)
    sink_mass = (probs * calib).sum(dim=-1, keepdim=True)
    freed = (1.0 - beta) * sink_mass
    rest = probs.masked_fill(calib, 0.0)
    rest_sum = rest.sum(dim=-1, keepdim=True)
    kept = torch.where(calib, beta * probs, probs)
    fixed = torch.where(
        rest_sum > 0, kept + freed * rest / rest_sum.clamp(min=torch.finfo(probs.dtype).tiny), probs
    )
    if official_quirks:
        row0 = probs[..., :1, :]
        first = kept[..., :1, :] + freed[..., :1, :] * row0 / row0.sum(-1, keepdim=True)
        first[..., 0] = 1.0
        fixed = torch.cat([first, fixed[..., 1:, :]], dim=-2)
    select = torch.zeros(probs.shape[:2], dtype=torch.bool, device=probs.device)
    if official_quirks:
        select[0, heads] = True
    else:
        select[:, heads] = True
    return torch.where(select[..., None, None], fixed, probs)


class ACTCalibration(nn.Module):
    """ACT calibration of post-softmax attention maps (no parameters).

    Input ``probs (B, h, N_q, N_k)`` and the head indices to calibrate; output the calibrated map,
    same shape. See the module docstring for the equations.

    Args:
        beta: factor kept on each calibrated sink (official scripts: 0.4).
        threshold: sink-score threshold (official scripts: 0.1).
        official_quirks: reproduce the official one-token decode behaviour (off by default).
    """

    def __init__(self, beta: float = 0.4, threshold: float = 0.1, *, official_quirks: bool = False) -> None:
        super().__init__()
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = float(beta)
        self.threshold = float(threshold)
        self.official_quirks = bool(official_quirks)

    def forward(self, probs: torch.Tensor, heads: Sequence[int]) -> torch.Tensor:
        return calibrate(
            probs, heads, beta=self.beta, threshold=self.threshold, official_quirks=self.official_quirks
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}, official_quirks={self.official_quirks}"


@contextmanager
def act_calibrate_model(
    model: nn.Module,
    heads: Mapping[int, Sequence[int]],
    *,
    beta: float = 0.4,
    threshold: float = 0.1,
    official_quirks: bool = False,
) -> Iterator[None]:
    """Run a ``transformers`` decoder with ACT applied to ``heads[layer]`` of each listed layer.

    The official setting calibrates layers 2..30 of Llama-2-7B with a per-layer head table found
    offline; pass that table (or your own search's) as ``heads``. Prefill and cached decoding are
    both calibrated.

    Raises:
        ValueError: a layer index is not a layer of ``model``.
    """
    layers = hf_attention_layers(model)
    missing = sorted(set(heads) - set(layers))
    if missing:
        raise ValueError(f"layers {missing} not in the model (layers 0..{max(layers)})")
    act = ACTCalibration(beta, threshold, official_quirks=official_quirks)

    def make(layer_heads: Sequence[int]) -> ProbEdit:
        return lambda probs, module: act(probs, layer_heads)

    with edit_attention(model, {layers[i]: make(list(h)) for i, h in heads.items()}):
        yield
