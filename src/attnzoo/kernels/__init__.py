"""Shared compute paths: every mechanism calls these instead of re-implementing the math."""

from attnzoo.kernels.attention import attention, attention_reference, causal_mask, merge_heads, split_heads

__all__ = ["attention", "attention_reference", "causal_mask", "merge_heads", "split_heads"]
