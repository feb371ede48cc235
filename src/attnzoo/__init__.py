"""attnzoo: attention mechanisms written once, verified against their authors' code, measured.

Quick start::

    import torch, attnzoo
    attn = attnzoo.create("mhsa", dim=64, num_heads=4)
    y = attn(torch.randn(2, 196, 64))
    print(attnzoo.card("mhsa").time_complexity)
"""

from attnzoo.capture import capture
from attnzoo.families import CrossAttention, FeatureMapAttention, Gate, Pooling, PoolOutput, TokenMixer
from attnzoo.registry import Card, card, create, list_mechanisms, mechanism_class, register

__version__ = "0.1.0"

__all__ = [
    "Card",
    "CrossAttention",
    "FeatureMapAttention",
    "Gate",
    "PoolOutput",
    "Pooling",
    "TokenMixer",
    "__version__",
    "capture",
    "card",
    "create",
    "list_mechanisms",
    "mechanism_class",
    "register",
]
