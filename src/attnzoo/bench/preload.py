"""Imported once by the benchmark fork server so that every worker starts with torch, attnzoo and
all registered mechanisms imported and the FLOP counter initialised (its first use costs
seconds); workers then only fork. The warm-up op is a 1-element matmul, below any threading."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from attnzoo.bench import measure as _measure  # noqa: F401
from attnzoo.registry import list_mechanisms

list_mechanisms()
with FlopCounterMode(display=False):
    torch.ones(1, 1) @ torch.ones(1, 1)
