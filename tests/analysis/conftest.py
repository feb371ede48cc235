"""Tiny randomly initialised transformers models built from config objects (nothing downloads)."""

from __future__ import annotations

import pytest
import torch
from tests import helpers

pytest.importorskip("transformers")


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    # initializer_range 0.5: peaked attention, so interventions change the output measurably
    return helpers.tiny_llama(num_hidden_layers=2, initializer_range=0.5)


@pytest.fixture
def tiny_vit() -> torch.nn.Module:
    return helpers.tiny_vit(num_hidden_layers=2, image_size=16)


@pytest.fixture
def tiny_clip_vision() -> torch.nn.Module:
    return helpers.tiny_clip_vision(num_hidden_layers=2, image_size=16)
