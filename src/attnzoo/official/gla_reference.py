"""Official GLA recurrence: ViG's vendored ``flash-linear-attention/fla/ops/gla/naive.py::
naive_recurrent_gla(q, k, v, gk, initial_state=None, output_final_state=False, causal=True)``.

A pure function (no parameters), head-first: ``q, k, gk: (B, H, L, Dk)``, ``v: (B, H, L, Dv)``,
``initial_state: (B, H, Dk, Dv)``; ``gk`` is the log forget gate. Returns, as the official code:

* ``causal=True``: ``(o, final_state)`` whatever ``output_final_state`` says;
* ``causal=False``: ``(o, o_reverse)``, where ``o`` is the forward scan (from ``initial_state``)
  and ``o_reverse`` the scan from the last token back, with the same gates and a zero state.

Forward kwargs that the fixtures give as descriptions of a tensor input (``gk``, and
``initial_state`` when it names ``input.initial_state``) are overridden by the tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from attnzoo.mechanisms.token_mixer.gla import GatedLinearAttentionOp
from attnzoo.official import Conversion, Signature, adapter


def _call(
    module: GatedLinearAttentionOp,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    causal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(gk, torch.Tensor):
        raise TypeError(f"gk must be a tensor, got {type(gk).__name__}")
    if initial_state is not None and not isinstance(initial_state, torch.Tensor):
        raise TypeError(f"initial_state must be a tensor or None, got {type(initial_state).__name__}")
    o, final_state = module(q, k, v, gk, initial_state)
    if causal:
        return o, final_state
    t = (2,)
    o_reverse, _ = module(q.flip(t), k.flip(t), v.flip(t), gk.flip(t))
    return o, o_reverse.flip(t)


@adapter("gla_reference", {"naive_recurrent_gla": Signature()})
def load_gla_reference(kw: dict[str, Any], symbol: str) -> Conversion:
    return Conversion(GatedLinearAttentionOp(), _call)
