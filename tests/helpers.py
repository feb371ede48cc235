"""Helpers shared by several test modules (import as ``tests.helpers``).

* :class:`LargestStorage`: a dispatch mode that records the largest storage any op returns, for
  structural "no N x N tensor is materialised" assertions.
* :func:`peak_bytes`: the peak of live CPU bytes allocated while a callable runs (profiler events).
* :func:`assert_steps_match_forward`: token-by-token ``step`` decoding reproduces the full forward.
* :func:`randomise`, :func:`randomise_seeded`: replace every parameter by ``N(0, 0.3^2)`` draws (the
  former from the global RNG, the latter from its own seeded generator); :func:`randomise_with_norm_stats`
  also redraws BatchNorm running statistics.
* :func:`constructor_arguments`, :data:`ALLOWED_ZERO`: every validated constructor argument of every
  mechanism with its kind (``int``, ``bool``, ``rate``, ``float``), and the counts for which 0 is valid.
* :func:`tiny_llama`, :func:`tiny_mistral`, :func:`tiny_vit`, :func:`tiny_clip_vision`: tiny
  randomly initialised Hugging Face ``transformers`` models built from config objects (nothing
  downloads); the caller skips when ``transformers`` is missing (``pytest.importorskip``) and seeds
  as it needs.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "ALLOWED_ZERO",
    "LargestStorage",
    "assert_steps_match_forward",
    "constructor_arguments",
    "peak_bytes",
    "randomise",
    "randomise_seeded",
    "randomise_with_norm_stats",
    "tiny_clip_vision",
    "tiny_llama",
    "tiny_mistral",
    "tiny_vit",
]


# Count arguments for which 0 is a meaningful value, with the reason.
ALLOWED_ZERO: dict[tuple[str, str], str] = {
    ("agent_attention", "num_prefix_tokens"): "no class/register tokens in front of the grid",
    ("acmil", "n_masked"): "0 disables the masking of the top-attended instances",
    ("based", "window"): "a local softmax branch in which every token sees only itself",
    ("biformer_bra", "side_dwconv"): "0 disables the local-context depthwise conv (LePE), as upstream",
    ("lightning_attention", "layer_idx"): "layer indices count from 0",
    ("moh_attention", "shared_head"): "every head is routed, none is always active",
    ("s2_attention", "num_sink"): "no attention-sink tokens",
    ("sdanet", "refine_level"): "levels are indexed from 0",
    ("sliding_window", "window"): "no neighbours: every token attends only to itself",
}
_RATE = re.compile(r"(^|_)(drop|dropout)$")


def _tokens(annotation: object) -> set[str]:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return {part.strip().split("[")[0] for part in text.split("|")}


def constructor_arguments() -> list[tuple[str, str, str, set[str]]]:
    """``(mechanism, argument, kind, annotation tokens)`` for every validated constructor argument of
    every registered mechanism; ``kind`` is ``int`` (also ``int | None``, ``int | tuple``), ``bool``,
    ``rate`` (a float named ``*drop``/``*dropout``) or ``float``."""
    import attnzoo

    found = []
    for name in attnzoo.list_mechanisms():
        params = inspect.signature(attnzoo.registry.mechanism_class(name).__init__).parameters
        for param in params.values():
            tokens = _tokens(param.annotation)
            if "int" in tokens and "float" not in tokens:
                found.append((name, param.name, "int", tokens))
            elif tokens == {"bool"}:
                found.append((name, param.name, "bool", tokens))
            elif "float" in tokens:
                found.append((name, param.name, "rate" if _RATE.search(param.name) else "float", tokens))
    return found


class LargestStorage(TorchDispatchMode):
    """Records the largest storage (in elements) of any tensor an op returns, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of live CPU bytes allocated while ``fn`` runs (profiler allocation events)."""
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    allocs = []
    while stack:
        ev = stack.pop()
        if ev.tag == _EventType.Allocation:
            allocs.append((ev.start_time_ns, ev.extra_fields.alloc_size))
        stack.extend(ev.children)
    live = peak = 0
    for _, nbytes in sorted(allocs):
        live += nbytes
        peak = max(peak, live)
    return peak


def assert_steps_match_forward(module: torch.nn.Module, x: torch.Tensor) -> Any:
    """Decode ``x (B, N, C)`` one token at a time with ``module.step`` from the empty state and
    assert every output equals the full forward ``module(x)[:, t]`` (float64 tolerances).

    Returns the state after the last token.
    """
    full = module(x)
    state = None
    for t in range(x.shape[1]):
        y, state = module.step(x[:, t], state)
        torch.testing.assert_close(y, full[:, t], atol=1e-12, rtol=1e-10)
    return state


def randomise(module: torch.nn.Module) -> None:
    """Redraw every parameter in place from ``N(0, 0.3^2)`` with the global RNG."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


def randomise_seeded(module: torch.nn.Module, seed: int = 0) -> None:
    """Set every parameter to ``0.3 * randn`` drawn from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def randomise_with_norm_stats(module: torch.nn.Module, seed: int = 0) -> None:
    """:func:`randomise_seeded`, and BatchNorm running statistics too: means ``0.1 * randn``, variances
    uniform in ``[0.5, 1.5)``, so an eval-mode oracle must apply them."""
    randomise_seeded(module, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen, dtype=b.dtype))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen, dtype=b.dtype))


def tiny_llama(*, num_hidden_layers: int, **extra: Any) -> torch.nn.Module:
    """A tiny ``LlamaForCausalLM`` (hidden 32, 4 heads, 2 KV heads, vocab 50, eager attention) in eval mode.

    ``extra`` adds further ``LlamaConfig`` fields (e.g. ``initializer_range``).
    """
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        max_position_embeddings=64,
        attn_implementation="eager",
        **extra,
    )
    return transformers.LlamaForCausalLM(config).eval()


def tiny_mistral(*, num_hidden_layers: int, sliding_window: int, **extra: Any) -> torch.nn.Module:
    """A tiny ``MistralForCausalLM`` with the shapes of :func:`tiny_llama` (so a Llama's weights load
    into it) and Mistral's sliding-window attention of ``sliding_window`` keys, in eval mode."""
    import transformers

    config = transformers.MistralConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=50,
        max_position_embeddings=64,
        sliding_window=sliding_window,
        attn_implementation="eager",
        **extra,
    )
    return transformers.MistralForCausalLM(config).eval()


def _tiny_vision_config(config_class: Any, *, num_hidden_layers: int, image_size: int) -> Any:
    """A tiny vision-transformer config: hidden 32, 2 heads, MLP 64, patch 4, eager attention."""
    return config_class(
        hidden_size=32,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=4,
        attn_implementation="eager",
    )


def tiny_vit(*, num_hidden_layers: int, image_size: int) -> torch.nn.Module:
    """A tiny ``ViTModel`` (see :func:`_tiny_vision_config`, no pooler) in eval mode."""
    import transformers

    config = _tiny_vision_config(
        transformers.ViTConfig, num_hidden_layers=num_hidden_layers, image_size=image_size
    )
    return transformers.ViTModel(config, add_pooling_layer=False).eval()


def tiny_clip_vision(*, num_hidden_layers: int, image_size: int) -> torch.nn.Module:
    """A tiny ``CLIPVisionModel`` (see :func:`_tiny_vision_config`) in eval mode."""
    import transformers

    config = _tiny_vision_config(
        transformers.CLIPVisionConfig, num_hidden_layers=num_hidden_layers, image_size=image_size
    )
    return transformers.CLIPVisionModel(config).eval()
