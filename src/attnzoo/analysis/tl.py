"""attnzoo's :class:`~attnzoo.models.CausalLM` as a TransformerLens model, weights carried over.

TransformerLens (4.x) builds small models from a config with ``TransformerBridge.boot_native``;
:func:`to_transformer_lens` builds the one with the shape of a ``CausalLM`` (pre-norm LayerNorm
blocks of ``mhsa`` and a GELU MLP, learned positions, final LayerNorm, linear head) and copies the
weights, so the two compute the same logits and TransformerLens' tools (``run_with_cache``,
``transformer_lens.patching``) run on an attnzoo-trained model. attnzoo's own analyses accept
either model (:mod:`attnzoo.analysis.hooks`). ``transformer_lens`` is imported only here.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from attnzoo.models.lm import CausalLM

__all__ = ["to_transformer_lens"]


def _plain(key: str) -> str:
    return key.replace("._original_component", "").replace("_original_component.", "")


def to_transformer_lens(model: CausalLM) -> Any:
    """A TransformerLens ``TransformerBridge`` computing what ``model`` computes (eval mode).

    Raises:
        ImportError: ``transformer_lens`` is not installed.
        ValueError: the model is not a plain transformer (a mixer other than ``mhsa``, a short
            convolution, BaseConv blocks, no positions or a block without MLP).
    """
    from attnzoo.mechanisms.token_mixer.mhsa import MultiHeadSelfAttention

    if not isinstance(model, CausalLM):
        raise TypeError(f"to_transformer_lens converts an attnzoo CausalLM, got {type(model).__name__}")
    blocks = list(model.blocks)
    problems = [
        f"block {i}: {why}"
        for i, b in enumerate(blocks)
        for why, bad in (
            (f"mixer {type(b.mixer).__name__} is not mhsa", not isinstance(b.mixer, MultiHeadSelfAttention)),
            ("has a short convolution", b.conv is not None),
            ("has no MLP", b.mlp is None),
        )
        if bad
    ]
    if model.pos is None:
        problems.append("no learned positions")
    if problems:
        raise ValueError(f"to_transformer_lens needs a plain mhsa transformer: {'; '.join(problems)}")
    try:
        from transformer_lens import TransformerBridge
        from transformer_lens.config import TransformerBridgeConfig
    except ImportError as exc:
        raise ImportError(
            "to_transformer_lens needs transformer_lens (pip install transformer-lens)"
        ) from exc
    attn = blocks[0].mixer
    cfg = TransformerBridgeConfig(
        d_model=model.dim,
        d_head=model.dim // attn.num_heads,
        n_layers=len(blocks),
        n_ctx=model.max_len,
        n_heads=attn.num_heads,
        d_vocab=model.vocab_size,
        d_mlp=blocks[0].mlp.fc1.out_features,
        act_fn="gelu",
        normalization_type="LN",
        eps=blocks[0].norm1.eps,
        seed=0,
    )
    bridge = TransformerBridge.boot_native(cfg)
    ours: dict[str, torch.Tensor] = {
        "tok_embed.weight": model.embed.weight,
        "pos.weight": model.pos[0],
        "ln_out.weight": model.norm.weight,
        "ln_out.bias": model.norm.bias,
        "head.weight": model.head.weight,
        "head.bias": model.head.bias if model.head.bias is not None else torch.zeros(model.vocab_size),
    }
    for i, b in enumerate(blocks):
        parts = {"q": 0, "k": 1, "v": 2}
        for name, j in parts.items():
            for kind in ("weight", "bias"):
                ours[f"layers.{i}.attn.{name}.{kind}"] = getattr(b.mixer.qkv, kind).chunk(3, 0)[j]
        for tl_name, module in (
            ("attn.o", b.mixer.proj),
            ("ln1", b.norm1),
            ("ln2", b.norm2),
            ("mlp.fc_in", b.mlp.fc1),
            ("mlp.fc_out", b.mlp.fc2),
        ):
            for kind in ("weight", "bias"):
                ours[f"layers.{i}.{tl_name}.{kind}"] = getattr(module, kind)
    native = bridge.original_model
    targets = {_plain(k): v for k, v in native.state_dict(keep_vars=True).items()}
    with torch.no_grad():
        for key, param in targets.items():
            source = ours.get(re.sub(r"\.mlp\.(in|out)\.", lambda m: f".mlp.fc_{m.group(1)}.", key))
            if source is None:
                raise ValueError(
                    f"to_transformer_lens: no attnzoo weight for TransformerLens parameter {key}"
                )
            param.copy_(source.detach())
    return bridge.eval()
