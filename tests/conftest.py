"""Test-wide settings: deterministic seeds, single-threaded torch for reproducible timings-free tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
