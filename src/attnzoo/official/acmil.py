"""Official ACMIL format: ``architecture/transformer.py::ACMIL_GA(conf, D=128, droprate=0, n_token=1,
n_masked_patch=0, mask_drop=0)`` of dazhangyu123/ACMIL.

``conf`` is the repository's config namespace (a mapping here) of which ``ACMIL_GA`` reads
``D_feat``, ``D_inner``, ``n_class`` and ``n_token`` (only stored; the ``n_token`` argument sets the
branches). ``forward(x (1, N, D_feat))`` returns ``(branch logits (K, n_class), slide logits
(1, n_class), A (1, K, N))`` with ``A`` the pre-softmax attention logits (STKIM-dropped entries =
-1e9). Keys: ``dimreduction.fc1.weight``, ``attention.attention_{V,U}.0.*``,
``attention.attention_weights.*``, ``classifier.<k>.fc.*``, ``Slide_classifier.fc.*``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attnzoo.mechanisms.pooling.acmil import ACMIL
from attnzoo.official import Conversion, Signature, adapter
from attnzoo.official.gated_attention_mil import gated_attention_renames
from attnzoo.official.keys import KeyMap

__all__ = ["convert_acmil"]

ACMIL_GA = Signature(
    conf=Signature(open=True, D_feat=int, D_inner=int, n_class=int, n_token=int),
    D=(int, 128),
    droprate=(float, 0.0),
    n_token=(int, 1),
    n_masked_patch=(int, 0),
    mask_drop=(float, 0.0),
)


def _keys(branches: int) -> KeyMap:
    renames = [("dimreduction.fc1.", "embed."), ("Slide_classifier.fc.", "bag_head.")]
    renames += gated_attention_renames("Attention_Gated", prefix="attention.")
    renames += [(f"classifier.{k}.fc.", f"branch_heads.{k}.") for k in range(branches)]
    return KeyMap(renames=renames)


def convert_acmil(state_dict: Mapping[str, torch.Tensor], branches: int) -> dict[str, torch.Tensor]:
    """Official ``ACMIL_GA`` keys -> :class:`ACMIL` keys."""
    return _keys(branches).to_attnzoo(state_dict)


def _call(m: ACMIL, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"the official ACMIL_GA takes x of shape (1, N, D_feat), got {tuple(x.shape)}")
    out = m.classify(x)
    logits = out.attention_logits.masked_fill(torch.isneginf(out.attention_logits), -1e9)
    return out.branch_logits[0], out.bag_logits, logits


@adapter("acmil", {"ACMIL_GA": ACMIL_GA})
def load_acmil(kw: dict[str, Any], symbol: str) -> Conversion:
    conf = kw["conf"]
    module = ACMIL(
        conf["D_feat"],
        conf["D_inner"],
        kw["D"],
        kw["n_token"],
        n_masked=kw["n_masked_patch"],
        mask_drop=kw["mask_drop"],
        num_classes=conf["n_class"],
        dropout=kw["droprate"],
    )
    keys = _keys(kw["n_token"])
    return Conversion(module, _call, keys.to_attnzoo, keys.to_official)
