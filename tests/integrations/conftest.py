"""Fixtures shared by the Hugging Face integration tests (``test_hf_*.py``).

Tiny models are built from config objects (nothing downloads). ``transformers`` is imported inside
the fixtures only, so the timm tests in this folder never need it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tests import helpers
from torch import nn

from attnzoo.integrations import hf
from attnzoo.integrations._hf_core import Binding, bindings

Ids = Callable[..., tuple[torch.Tensor, torch.Tensor]]
Attend = Callable[..., tuple[torch.Tensor, "torch.Tensor | None"]]


class StandIn(nn.Module):
    """A stand-in attention module: only ``is_causal`` (no config, eval mode)."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.is_causal = causal
        self.eval()


@pytest.fixture
def hf_registered() -> None:
    """attnzoo's implementations registered with ``transformers`` (idempotent)."""
    pytest.importorskip("transformers")
    hf.register()


@pytest.fixture
def llama() -> nn.Module:
    """A tiny 3-layer ``LlamaForCausalLM`` with eager attention (4 heads, 2 key/value heads)."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    return helpers.tiny_llama(num_hidden_layers=3)


@pytest.fixture
def make_ids() -> Ids:
    """``make_ids(b=2, n=9, seed=0, pad=3) -> (input_ids (b, n), attention_mask (b, n))``: random
    token ids; the last batch element is left-padded by ``pad`` tokens."""

    def make(b: int = 2, n: int = 9, seed: int = 0, pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, 50, (b, n), generator=torch.Generator().manual_seed(seed))
        mask = torch.ones(b, n, dtype=torch.long)
        mask[-1, :pad] = 0
        return ids, mask

    return make


@pytest.fixture
def stand_in() -> Callable[..., StandIn]:
    """``stand_in(causal, mechanism=None, settings=None)``: a :class:`StandIn` module, with
    ``settings`` bound for ``mechanism`` as :func:`attnzoo.integrations.hf.configure` would."""

    def make(causal: bool, mechanism: str | None = None, settings: object = None) -> StandIn:
        module = StandIn(causal)
        if mechanism is not None:
            bindings(module)[mechanism] = Binding(settings)
        return module

    return make


@pytest.fixture
def attend(hf_registered: None) -> Attend:
    """``attend(implementation, module, q, k, v, mask=None, **kwargs)``: the registered attention
    function called as a ``transformers`` module calls it (``scaling=None, dropout=0.0``); returns
    ``(out (B, N_q, h, d_v), probs or None)``."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def call(
        name: str,
        module: nn.Module,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return ALL_ATTENTION_FUNCTIONS[name](module, q, k, v, mask, scaling=None, dropout=0.0, **kwargs)

    return call
