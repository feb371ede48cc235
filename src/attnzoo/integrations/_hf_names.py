"""Names of attnzoo's attention implementations for Hugging Face ``transformers``.

Kept free of imports so that :mod:`attnzoo.analysis.hf` can list them without importing
``transformers`` or the integration itself.
"""

from __future__ import annotations

__all__ = ["IMPLEMENTATIONS", "INFERENCE_METHODS", "MECHANISMS", "PREFIX", "TOKEN_MIXERS"]

PREFIX = "attnzoo_"

TOKEN_MIXERS: tuple[str, ...] = ("mhsa", "sliding_window", "neighborhood_attention_1d", "s2_attention")
"""Registered token mixers whose math runs on a pretrained model's own q/k/v."""

INFERENCE_METHODS: tuple[str, ...] = ("act", "var", "pine", "recycled")
"""Inference-time methods of :mod:`attnzoo.inference` that edit a pretrained model's attention."""

MECHANISMS: tuple[str, ...] = TOKEN_MIXERS + INFERENCE_METHODS

IMPLEMENTATIONS: tuple[str, ...] = tuple(PREFIX + name for name in MECHANISMS)
"""``attn_implementation`` names registered by :func:`attnzoo.integrations.hf.register`."""
