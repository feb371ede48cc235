"""Tiny randomly initialised transformers models built from config objects (nothing downloads)."""

from __future__ import annotations

import pytest
import torch
from tests import helpers

pytest.importorskip("transformers")


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return helpers.tiny_llama(num_hidden_layers=3)


@pytest.fixture
def tiny_clip_vision() -> torch.nn.Module:
    torch.manual_seed(0)
    return helpers.tiny_clip_vision(num_hidden_layers=6, image_size=24)


@pytest.fixture
def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return helpers.tiny_vit(num_hidden_layers=4, image_size=20)
