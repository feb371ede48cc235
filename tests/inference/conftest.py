"""Tiny randomly initialised transformers models built from config objects (nothing downloads)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_clip_vision() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=24,
        patch_size=4,
        attn_implementation="eager",
    )
    return transformers.CLIPVisionModel(config).eval()


@pytest.fixture
def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=20,
        patch_size=4,
        attn_implementation="eager",
    )
    return transformers.ViTModel(config, add_pooling_layer=False).eval()
