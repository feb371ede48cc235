"""Tiny models for the circuit-analysis tests: random weights, nothing downloads."""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.analysis.templates import default_vocab
from attnzoo.models.train_lm import tiny_lm


def random_lm(
    *, depth: int = 2, heads: int = 2, dim: int = 16, max_len: int = 20, seed: int = 0
) -> nn.Module:
    """A :func:`tiny_lm` over the template vocabulary with weights drawn from N(0, 0.5^2) (peaked
    attention, so every patch moves the logits), in eval mode."""
    model = tiny_lm(len(default_vocab()), max_len, dim=dim, depth=depth, num_heads=heads, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def tiny_gpt2(vocab_size: int, *, seed: int = 0) -> nn.Module:
    """A random ``GPT2LMHeadModel`` (2 layers, 4 heads, width 32, fused ``c_attn``), eager, eval mode."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=vocab_size, n_positions=32, attn_implementation="eager",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()
