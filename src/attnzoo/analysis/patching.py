"""Activation patching and path patching of attention heads, scored by the logit difference.

Both compare a *clean* and a *corrupted* run of the same prompts (:class:`ContrastPrompts`):

* :func:`activation_patching` (Meng et al., ROME, 2022; TransformerLens'
  ``patching.get_act_patch_attn_head_{out,q,k,v}_all_pos``): run the *base* prompts with one head's
  site (``z``, ``q``, ``k`` or ``v``, see :mod:`attnzoo.analysis.hooks`) replaced by its value on the
  *source* prompts. ``direction="denoising"`` (TransformerLens' default) patches clean values into
  the corrupted run; ``"noising"`` patches corrupted values into the clean run.
* :func:`path_patching` (Wang et al., "Interpretability in the Wild", 2022, arXiv 2211.00593;
  Merullo et al. 2023): the effect of one *sender* head through one set of paths only. (1) Run the
  base prompts with the sender's output ``z`` taken from the source run and every other head's
  output frozen to its base value (MLPs recomputed, or frozen with ``freeze_mlps``), recording the
  receivers' inputs (their ``q``, ``k`` or ``v``), or, with ``receivers="logits"``, reading the
  logits. (2) Run the base prompts again with only the receivers' inputs set to the recorded values.

The metric is the mean logit difference ``logit[correct] - logit[wrong]`` at the scored positions
(:func:`logit_difference`); a result also gives the normalised effect
``(metric_patched - metric_base) / (metric_clean - metric_corrupt)``: about +1 when a denoising
patch restores the clean behaviour, about -1 when a noising patch destroys it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from attnzoo.analysis.hooks import AttentionLayer, Edit, attention_layers, head_hooks, logits_of
from attnzoo.analysis.templates import ContrastPrompts

__all__ = [
    "PatchResult",
    "activation_patching",
    "logit_difference",
    "path_patching",
    "prompt_accuracy",
    "run_edited",
]

Direction = Literal["noising", "denoising"]
Head = tuple[int, int]


def logit_difference(logits: torch.Tensor, prompts: ContrastPrompts) -> torch.Tensor:
    """Per prompt, the mean over valid scored positions of ``logit[correct] - logit[wrong]``:
    ``logits (S, N, V) -> (S,)``."""
    if logits.ndim != 3 or logits.shape[0] != len(prompts):
        raise ValueError(
            f"logits must be (S, N, V) with S = {len(prompts)} prompts, got {tuple(logits.shape)}"
        )
    rows = logits.gather(1, prompts.positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    diff = rows.gather(-1, prompts.correct.unsqueeze(-1)) - rows.gather(-1, prompts.wrong.unsqueeze(-1))
    w = prompts.valid.to(diff.dtype)
    return (diff.squeeze(-1) * w).sum(-1) / w.sum(-1)


def prompt_accuracy(logits: torch.Tensor, prompts: ContrastPrompts) -> torch.Tensor:
    """Per prompt, whether the arg-max token is ``correct`` at every valid scored position: ``(S,)`` bool."""
    rows = logits.gather(1, prompts.positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    hit = rows.argmax(-1) == prompts.correct
    return (hit | ~prompts.valid).all(-1)


def run_edited(
    model: nn.Module,
    tokens: torch.Tensor,
    layers: Sequence[AttentionLayer],
    edits: dict[tuple[int, str], Edit] | None = None,
    mlp_edits: dict[int, Edit] | None = None,
) -> torch.Tensor:
    """Logits ``(B, N, V)`` of ``model`` on ``tokens`` with the site edits applied, in eval mode (the
    model's mode is restored) and without gradients."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), head_hooks(model, edits or {}, mlp_edits=mlp_edits, layers=layers):
            return logits_of(model, tokens)
    finally:
        model.train(was)


def _record(store: dict[Any, torch.Tensor], key: Any) -> Edit:
    def edit(x: torch.Tensor) -> torch.Tensor:
        store[key] = x.detach().clone()
        return x

    return edit


def cache_sites(
    model: nn.Module,
    tokens: torch.Tensor,
    layers: Sequence[AttentionLayer],
    sites: Sequence[str],
    *,
    mlps: bool = False,
) -> tuple[dict[tuple[int, str], torch.Tensor], dict[int, torch.Tensor]]:
    """Run ``model`` on ``tokens`` and keep ``{(layer, site): (B, N, h, d)}`` and, with ``mlps``,
    ``{layer: MLP output (B, N, D)}``."""
    store: dict[Any, torch.Tensor] = {}
    edits = {(i, s): _record(store, (i, s)) for i in range(len(layers)) for s in sites}
    mlp_store: dict[Any, torch.Tensor] = {}
    # a layer whose MLP could not be located is included so that head_hooks names it
    wanted = [i for i, ly in enumerate(layers) if ly.mlp is not None or not ly.mlp_found] if mlps else []
    mlp_edits = {i: _record(mlp_store, i) for i in wanted}
    run_edited(model, tokens, layers, edits, mlp_edits)
    return store, mlp_store


def _replace_head(source: torch.Tensor, head: int, where: torch.Tensor | None) -> Edit:
    def edit(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        if where is None:
            x[:, :, head] = source[:, :, head]
        else:
            x[:, :, head] = torch.where(where[..., None], source[:, :, head], x[:, :, head])
        return x

    return edit


def _constant(value: torch.Tensor) -> Edit:
    return lambda x: value


@dataclass
class PatchResult:
    """Patching metrics per head.

    Attributes:
        kind: ``"activation"`` or ``"path"``.
        site: the patched site (activation patching) or the receivers' input (``"logits"``,
            ``"q"``, ``"k"``, ``"v"``) of path patching.
        direction: ``"denoising"`` (base = corrupted, source = clean) or ``"noising"``.
        clean / corrupt: mean logit difference of the unpatched clean / corrupted runs.
        patched: ``(layers, heads)`` mean logit difference with each head patched (NaN where no
            path exists: a sender at or after every receiver).
        receivers: the receiver heads of path patching.
        layer_names: the attention modules, one per row.
    """

    kind: str
    site: str
    direction: str
    clean: float
    corrupt: float
    patched: torch.Tensor
    receivers: list[Head] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)

    @property
    def base(self) -> float:
        return self.corrupt if self.direction == "denoising" else self.clean

    @property
    def effect(self) -> torch.Tensor:
        """``(patched - base) / (clean - corrupt)``, ``(layers, heads)``."""
        return (self.patched - self.base) / (self.clean - self.corrupt)

    def ranking(self) -> list[tuple[Head, float]]:
        """Heads sorted by ``|effect|``, largest first (heads without a path left out)."""
        eff = self.effect
        items = [((i, h), float(eff[i, h])) for i in range(eff.shape[0]) for h in range(eff.shape[1])]
        return sorted((x for x in items if not math.isnan(x[1])), key=lambda x: -abs(x[1]))

    def to_dict(self) -> dict[str, Any]:
        def rows(t: torch.Tensor) -> list[list[float | None]]:
            return [[None if math.isnan(v) else round(v, 5) for v in row] for row in t.tolist()]

        return {
            "kind": self.kind,
            "site": self.site,
            "direction": self.direction,
            "clean_logit_diff": self.clean,
            "corrupt_logit_diff": self.corrupt,
            "patched_logit_diff": rows(self.patched),
            "effect": rows(self.effect),
            "receivers": [list(r) for r in self.receivers],
            "layers": self.layer_names,
        }


def _setup(
    model: nn.Module, prompts: ContrastPrompts, direction: str
) -> tuple[list[AttentionLayer], float, float, torch.Tensor, torch.Tensor]:
    if direction not in ("noising", "denoising"):
        raise ValueError(f"direction must be 'noising' or 'denoising', got {direction!r}")
    layers = attention_layers(model)
    clean = float(logit_difference(run_edited(model, prompts.clean, layers), prompts).mean())
    corrupt = float(logit_difference(run_edited(model, prompts.corrupt, layers), prompts).mean())
    if abs(clean - corrupt) < 1e-6:
        raise ValueError(
            f"{prompts.name}: the clean and corrupted runs have the same logit difference ({clean:.3g}), "
            "so no patch can be normalised; the model does not tell them apart"
        )
    base, source = (
        (prompts.corrupt, prompts.clean) if direction == "denoising" else (prompts.clean, prompts.corrupt)
    )
    return layers, clean, corrupt, base, source


def activation_patching(
    model: nn.Module,
    prompts: ContrastPrompts,
    *,
    site: str = "z",
    direction: Direction = "denoising",
    positions: torch.Tensor | None = None,
    progress: bool = False,
) -> PatchResult:
    """Patch one head's ``site`` at a time from the source run into the base run.

    Args:
        model: an attnzoo, ``transformers`` or TransformerLens causal LM (see :mod:`attnzoo.analysis.hooks`).
        prompts: the contrast pairs.
        site: ``"z"`` (head output), ``"q"``, ``"k"`` or ``"v"``.
        direction: ``"denoising"`` (clean into corrupted) or ``"noising"`` (corrupted into clean).
        positions: ``(S, N)`` bool, the token positions to patch (default: all).
        progress: show a tqdm bar.

    Returns:
        a :class:`PatchResult` of shape ``(layers, heads)`` (key/value heads for ``k``/``v``).
    """
    layers, clean, corrupt, base, source = _setup(model, prompts, direction)
    if positions is not None and (positions.dtype != torch.bool or positions.shape != prompts.clean.shape):
        raise ValueError(f"positions must be a bool tensor of shape {tuple(prompts.clean.shape)}")
    cache, _ = cache_sites(model, source, layers, [site])
    heads = max(ly.heads_of(site) for ly in layers)
    patched = torch.full((len(layers), heads), float("nan"))
    jobs = [(ly.index, h) for ly in layers for h in range(ly.heads_of(site))]
    for i, h in tqdm(jobs, desc=f"{prompts.name}: patch {site}", disable=not progress, leave=False):
        edit = {(i, site): _replace_head(cache[(i, site)], h, positions)}
        patched[i, h] = logit_difference(run_edited(model, base, layers, edit), prompts).mean()
    names = [ly.name for ly in layers]
    return PatchResult("activation", site, direction, clean, corrupt, patched, layer_names=names)


def path_patching(
    model: nn.Module,
    prompts: ContrastPrompts,
    *,
    receivers: Literal["logits"] | Sequence[Head] = "logits",
    receiver_site: str = "q",
    senders: Sequence[Head] | None = None,
    freeze_mlps: bool = False,
    direction: Direction = "noising",
    progress: bool = False,
) -> PatchResult:
    """Path patching from each sender head to ``receivers`` (see the module docstring).

    Args:
        receivers: ``"logits"`` (the paths that end in the logits) or receiver heads ``[(layer, head)]``.
        receiver_site: the receivers' input the paths end in: ``"q"``, ``"k"`` or ``"v"``.
        senders: heads to test (default: every head).
        freeze_mlps: also freeze every MLP output, so only the direct sender -> receiver edge
            counts (TransformerLens' ``get_act_patch_direct_path``); by default MLPs are recomputed,
            as Wang et al. do.
        direction: ``"noising"`` (Wang et al.: corrupted sender into the clean run) or ``"denoising"``.

    Returns:
        a :class:`PatchResult` of shape ``(layers, heads)``; senders without a path are NaN.
    """
    if receiver_site not in ("q", "k", "v"):
        raise ValueError(f"receiver_site must be 'q', 'k' or 'v', got {receiver_site!r}")
    layers, clean, corrupt, base, source = _setup(model, prompts, direction)
    to_logits = isinstance(receivers, str)
    if to_logits and receivers != "logits":
        raise ValueError(f"receivers must be 'logits' or a list of (layer, head), got {receivers!r}")
    targets = [] if to_logits else [(int(i), int(h)) for i, h in receivers]
    for i, h in targets:
        if not 0 <= i < len(layers) or not 0 <= h < layers[i].heads_of(receiver_site):
            raise ValueError(f"receiver ({i}, {h}) out of range for the model's attention layers")
    base_z, base_mlp = cache_sites(model, base, layers, ["z"], mlps=freeze_mlps)
    source_z, _ = cache_sites(model, source, layers, ["z"])
    every = [(ly.index, h) for ly in layers for h in range(ly.num_heads)]
    chosen = every if senders is None else [(int(i), int(h)) for i, h in senders]
    patched = torch.full((len(layers), max(ly.num_heads for ly in layers)), float("nan"))
    mlp_edits = {i: _constant(v) for i, v in base_mlp.items()} if freeze_mlps else None
    desc = f"{prompts.name}: paths -> {'logits' if to_logits else receiver_site}"
    for i, h in tqdm(chosen, desc=desc, disable=not progress, leave=False):
        later = [r for r in targets if r[0] > i]
        if not to_logits and not later:
            continue
        edits: dict[tuple[int, str], Edit] = {
            (j, "z"): _constant(base_z[(j, "z")]) for j in range(len(layers))
        }
        edits[(i, "z")] = _merge_frozen(base_z[(i, "z")], source_z[(i, "z")], h)
        recorded: dict[Any, torch.Tensor] = {}
        for j in {r[0] for r in later}:
            edits[(j, receiver_site)] = _record(recorded, j)
        logits = run_edited(model, base, layers, edits, mlp_edits)
        if not to_logits:
            step2 = {}
            for j in {r[0] for r in later}:
                heads_j = [r[1] for r in later if r[0] == j]
                step2[(j, receiver_site)] = _replace_heads(recorded[j], heads_j)
            logits = run_edited(model, base, layers, step2)
        patched[i, h] = logit_difference(logits, prompts).mean()
    names = [ly.name for ly in layers]
    site = "logits" if to_logits else receiver_site
    return PatchResult("path", site, direction, clean, corrupt, patched, targets, names)


def _merge_frozen(base: torch.Tensor, source: torch.Tensor, head: int) -> Edit:
    value = base.clone()
    value[:, :, head] = source[:, :, head]
    return _constant(value)


def _replace_heads(source: torch.Tensor, heads: Sequence[int]) -> Edit:
    def edit(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, list(heads)] = source[:, :, list(heads)]
        return x

    return edit
