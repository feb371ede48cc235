"""The backbone each task kind trains, and which mechanisms it cannot host (and why).

Sequence tasks use :class:`~attnzoo.models.CausalLM`; image tasks :class:`~attnzoo.models.ViTTiny`
for token mixers and :class:`~attnzoo.models.SmallCNN` for feature-map attention; MIL tasks
:class:`~attnzoo.models.MILClassifier`. :func:`host_refusal` asks
:func:`attnzoo.models.build.refusal` with the backbone's ``HOSTS``, so a report can list every
mechanism of a task's families that cannot run it, with the reason, instead of leaving a hole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

import attnzoo
from attnzoo.models import CausalLM, MILClassifier, SmallCNN, ViTTiny
from attnzoo.models.build import refusal
from attnzoo.tasks.catalog import Preset
from attnzoo.tasks.data import TaskData

__all__ = ["MODEL_KEYS", "build_model", "host_refusal", "task_refusals"]

MODEL_KEYS: dict[str, set[str]] = {
    "sequence": {"width", "depth", "mlp_ratio", "short_conv", "base_conv", "tie_embeddings", "positional"},
    "image": {"width", "depth", "mlp_ratio", "patch_size", "cnn_widths"},
    "mil": {"width"},
}
"""Backbone settings a preset (or ``run_eval(model=...)``) may set, per task kind."""

_IMAGE_FAMILIES = ("token_mixer", "feature_map")


def _host(kind: str, family: str) -> type[nn.Module] | None:
    if kind == "sequence":
        return CausalLM
    if kind == "image":
        return {"token_mixer": ViTTiny, "feature_map": SmallCNN}.get(family)
    if kind == "mil":
        return MILClassifier
    raise ValueError(f"unknown task kind {kind!r}")


def host_refusal(kind: str, mechanism: str) -> str | None:
    """Why the backbone of a ``kind`` task cannot host ``mechanism`` (by its card), or ``None``."""
    card = attnzoo.card(mechanism)
    host = _host(kind, card.family)
    if host is None:
        return refusal(card.name, family=_IMAGE_FAMILIES)
    return refusal(card.name, **host.HOSTS)


def task_refusals(kind: str, families: Sequence[str], asked: Sequence[str] = ()) -> dict[str, str]:
    """``{mechanism: reason}`` for every registered mechanism of ``families`` and every one of
    ``asked`` that the backbone of a ``kind`` task cannot host, in registry order then ``asked``'s."""
    names = [n for f in families for n in attnzoo.list_mechanisms(family=f)]
    names += [attnzoo.card(n).name for n in asked if attnzoo.card(n).name not in names]
    out = {}
    for name in names:
        reason = host_refusal(kind, name)
        if reason is not None:
            out[name] = reason
    return out


def build_model(
    data: TaskData, preset: Preset, mechanism: str, overrides: Mapping[str, Any] | None = None
) -> tuple[nn.Module, str]:
    """The backbone for ``data`` with ``mechanism`` plugged in, and the backbone's name.

    Raises:
        ValueError: the backbone cannot host ``mechanism`` (:func:`host_refusal`), or its
            constructor rejects the fitted arguments.
    """
    reason = host_refusal(data.kind, mechanism)
    if reason is not None:
        raise ValueError(f"task {data.name!r}: {reason}")
    family = attnzoo.card(mechanism).family
    m = preset.model
    if data.kind == "sequence":
        model = CausalLM(
            data.meta["vocab_size"],
            m["width"],
            m["depth"],
            mechanism,
            max_len=data.meta["seq_len"],
            mlp_ratio=m.get("mlp_ratio", 0.0),
            short_conv=m.get("short_conv", 0),
            base_conv=m.get("base_conv", 0),
            tie_embeddings=m.get("tie_embeddings", False),
            positional=m.get("positional", True),
            mixer_overrides=overrides,
        )
        return model, "CausalLM"
    if data.kind == "image":
        c, h, w = data.meta["image_shape"]
        if family == "feature_map":
            return SmallCNN(
                c, data.meta["num_classes"], m["cnn_widths"], mechanism, attention_overrides=overrides
            ), "SmallCNN"
        return ViTTiny(
            (h, w),
            m["patch_size"],
            c,
            data.meta["num_classes"],
            m["width"],
            m["depth"],
            mechanism,
            mlp_ratio=m.get("mlp_ratio", 2.0),
            mixer_overrides=overrides,
        ), "ViTTiny"
    return MILClassifier(
        data.meta["image_shape"][0], m["width"], mechanism, pooling_overrides=overrides
    ), "MILClassifier"
