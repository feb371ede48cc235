"""Per-head hook sites: read and replace each attention head's query, key, value and output.

Circuit analyses (activation patching, path patching, head ablation, precise fine-tuning) act on
four per-head *sites* of every attention layer, named as in TransformerLens:

=====  ==============================================  ============================================
site   tensor, per head ``(B, N, h, d)``                where attnzoo reads it
=====  ==============================================  ============================================
``q``  the head's query, after its projection           output features of the query projection
``k``  its key (``h_kv`` key/value heads under GQA)     output features of the key projection
``v``  its value                                        output features of the value projection
``z``  its output ``softmax(q k^T) v``, before W_O       input features of the output projection
=====  ==============================================  ============================================

Three kinds of model are supported, found by :func:`attention_layers`:

* attnzoo's ``mhsa`` (:class:`~attnzoo.mechanisms.token_mixer.mhsa.MultiHeadSelfAttention`, e.g. in
  :class:`~attnzoo.models.CausalLM`): the fused ``qkv`` Linear (``[q | k | v]``, head-major) and
  the ``proj`` Linear over the merged heads;
* Hugging Face ``transformers`` attention modules (those of
  :func:`attnzoo.analysis.hf.hf_attention_modules`) with separate ``q_proj/k_proj/v_proj``
  (``query/key/value``) or fused ``c_attn``/``qkv_proj`` projections and an ``o_proj``/``out_proj``/
  ``c_proj``/``dense`` output projection (BERT's ``attention.output.dense`` beside the
  self-attention). The sites are module hooks on the projections, so they work under every
  attention implementation (eager, sdpa, the ``attnzoo_*`` ones of :mod:`attnzoo.integrations.hf`);
  queries and keys are read before rotary embeddings, as TransformerLens' ``hook_q``/``hook_k``;
* TransformerLens models (``TransformerBridge``, e.g. ``TransformerBridge.boot_native(config)``):
  its hook points ``blocks.{l}.attn.hook_{q,k,v,z}`` and ``blocks.{l}.hook_mlp_out``.

A model with none of these raises :class:`HookError` naming the modules it found and what they lack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnzoo.analysis.hf import hf_attention_modules, num_heads_of

__all__ = [
    "SITES",
    "AttentionLayer",
    "HeadSlice",
    "HookError",
    "attention_layers",
    "head_hooks",
    "head_parameter_masks",
    "logits_of",
]

SITES: tuple[str, ...] = ("q", "k", "v", "z")

Edit = Callable[[torch.Tensor], torch.Tensor]
"""A site edit: the site's per-head tensor ``(B, N, h, d)`` in, its replacement (same shape) out."""


class HookError(TypeError):
    """The model has no attention layer (or MLP) that attnzoo can hook for this analysis."""


@dataclass(frozen=True)
class HeadSlice:
    """Where a site lives in a projection: ``heads * head_dim`` features from ``start``.

    Attributes:
        module: the projection (``nn.Linear``, or ``transformers``' ``Conv1D`` with weight (in, out)).
        start: first feature of head 0.
        heads: heads in the slice.
        head_dim: features per head.
        inputs: True for input features (the output projection, site ``z``), False for outputs.
    """

    module: nn.Module
    start: int
    heads: int
    head_dim: int
    inputs: bool = False

    def weight_slices(self, head: int) -> list[tuple[nn.Parameter, tuple[slice, ...]]]:
        """The entries of the module's parameters that belong to ``head`` alone."""
        lo = self.start + head * self.head_dim
        cols = slice(lo, lo + self.head_dim)
        conv1d = type(self.module).__name__ == "Conv1D"  # weight stored (in, out)
        feature_axis = (0 if self.inputs else 1) if conv1d else (1 if self.inputs else 0)
        index = (cols, slice(None)) if feature_axis == 0 else (slice(None), cols)
        out = [(self.module.weight, index)]
        bias = getattr(self.module, "bias", None)
        if not self.inputs and isinstance(bias, nn.Parameter):
            out.append((bias, (cols,)))
        return out


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer and its per-head sites.

    Attributes:
        index: position among the model's attention layers (0 = first).
        name: module path (TransformerLens: ``blocks.{index}.attn``).
        num_heads / num_kv_heads / head_dim: query heads, key/value heads, features per head.
        sites: ``{site: HeadSlice}`` for module-hook backends, ``{site: hook point name}`` for
            TransformerLens.
        mlp: the module (or hook point name) whose output is this block's MLP write; ``None`` when
            the block has no MLP.
        mlp_found: False when the block's MLP could not be located (freezing MLPs then raises).
    """

    index: int
    name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sites: Mapping[str, HeadSlice | str]
    mlp: nn.Module | str | None
    mlp_found: bool = True

    def heads_of(self, site: str) -> int:
        return self.num_kv_heads if site in ("k", "v") else self.num_heads


def _is_transformer_lens(model: nn.Module) -> bool:
    cfg = getattr(model, "cfg", None)
    return isinstance(getattr(model, "hook_dict", None), dict) and hasattr(cfg, "n_layers")


def _tl_layers(model: Any) -> list[AttentionLayer]:
    cfg = model.cfg
    kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    layers = []
    for i in range(cfg.n_layers):
        sites = {s: f"blocks.{i}.attn.hook_{s}" for s in SITES}
        missing = [n for n in sites.values() if n not in model.hook_dict]
        if missing:
            raise HookError(
                f"TransformerLens model has no hook point(s) {missing}: block {i} is not attention"
            )
        mlp = f"blocks.{i}.hook_mlp_out"
        layers.append(
            AttentionLayer(
                i,
                f"blocks.{i}.attn",
                cfg.n_heads,
                kv,
                cfg.d_head,
                sites,
                mlp if mlp in model.hook_dict else None,
            )
        )
    return layers


def _parent(modules: Mapping[str, nn.Module], name: str) -> tuple[str, nn.Module | None]:
    up = name.rpartition(".")[0]
    return up, modules.get(up)


def _mhsa_layer(index: int, name: str, module: nn.Module, modules: Mapping[str, nn.Module]) -> AttentionLayer:
    h = module.num_heads
    d = module.proj.in_features // h
    c = h * d
    sites = {
        "q": HeadSlice(module.qkv, 0, h, d),
        "k": HeadSlice(module.qkv, c, h, d),
        "v": HeadSlice(module.qkv, 2 * c, h, d),
        "z": HeadSlice(module.proj, 0, h, d, inputs=True),
    }
    _, block = _parent(modules, name)
    found = block is not None and hasattr(block, "mlp")
    return AttentionLayer(index, name, h, h, d, sites, getattr(block, "mlp", None), found)


_SEPARATE = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
_FUSED = ("c_attn", "qkv_proj")
_OUTPUT = ("o_proj", "out_proj", "c_proj", "dense")


def _hf_layer(index: int, name: str, module: nn.Module, modules: Mapping[str, nn.Module]) -> AttentionLayer:
    h = num_heads_of(module)
    config = module.config
    kv = int(
        getattr(module, "num_key_value_heads", None) or getattr(config, "num_key_value_heads", None) or h
    )
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    d = int(getattr(module, "head_dim", None) or hidden // h)
    sites: dict[str, HeadSlice] = {}
    for names in _SEPARATE:
        if all(isinstance(getattr(module, n, None), nn.Module) for n in names):
            for site, n in zip("qkv", names):
                sites[site] = HeadSlice(getattr(module, n), 0, h if site == "q" else kv, d)
    fused = next(
        (getattr(module, n) for n in _FUSED if isinstance(getattr(module, n, None), nn.Module)), None
    )
    if not sites and fused is not None:
        sites = {
            "q": HeadSlice(fused, 0, h, d),
            "k": HeadSlice(fused, h * d, kv, d),
            "v": HeadSlice(fused, (h + kv) * d, kv, d),
        }
    up, parent = _parent(modules, name)
    out = next((getattr(module, n) for n in _OUTPUT if isinstance(getattr(module, n, None), nn.Module)), None)
    if out is None and parent is not None:  # BERT: attention.self beside attention.output.dense
        out = getattr(getattr(parent, "output", None), "dense", None)
        up, parent = _parent(modules, up)
    if out is None or len(sites) != 3:
        lacking = (
            [] if len(sites) == 3 else ["query/key/value projections (q_proj.., query.., c_attn, qkv_proj)"]
        )
        lacking += [] if out is not None else ["an output projection (o_proj, out_proj, c_proj, dense)"]
        raise HookError(f"{name} ({type(module).__name__}) has no {' and no '.join(lacking)}")
    sites["z"] = HeadSlice(out, 0, h, d, inputs=True)
    mlp = getattr(parent, "mlp", None) if parent is not None else None
    return AttentionLayer(index, name, h, kv, d, sites, mlp, isinstance(mlp, nn.Module))


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """The attention layers of ``model`` with per-head sites, in forward order.

    Raises:
        HookError: the model has no attention layer attnzoo can hook (the message names the
            attention-like modules it found and what they lack), or it mixes hookable layers with
            attnzoo mechanisms that have no per-head sites (an analysis would silently skip them).
    """
    if _is_transformer_lens(model):
        return _tl_layers(model)
    from attnzoo.mechanisms.token_mixer.mhsa import MultiHeadSelfAttention

    modules = dict(model.named_modules())
    hf = hf_attention_modules(model)
    layers: list[AttentionLayer] = []
    others: list[str] = []
    unhookable: list[str] = []
    for name, module in modules.items():
        if isinstance(module, MultiHeadSelfAttention):
            layers.append(_mhsa_layer(len(layers), name, module, modules))
        elif name in hf:
            layers.append(_hf_layer(len(layers), name, module, modules))
        elif getattr(type(module), "card", None) is not None or "Attention" in type(module).__name__:
            others.append(f"{name or '<model>'} ({type(module).__name__})")
            card = getattr(type(module), "card", None)
            if card is not None and card.family in ("token_mixer", "cross_attention"):
                unhookable.append(others[-1])
    if layers and unhookable:
        raise HookError(
            f"{type(model).__name__} mixes hookable attention with mechanisms that have no per-head "
            f"q/k/v/z sites ({', '.join(unhookable[:6])}); an analysis would leave them out"
        )
    if not layers:
        found = f"; found {', '.join(others[:6])}, which have no per-head q/k/v/z sites" if others else ""
        raise HookError(
            f"{type(model).__name__} has no attention layer attnzoo can hook per head: it needs attnzoo's "
            "'mhsa' (fused qkv + proj), a transformers attention module with q/k/v and output projections, "
            f"or a TransformerLens model with blocks.*.attn.hook_q/k/v/z{found}"
        )
    return layers


def _check_edits(layers: Sequence[AttentionLayer], edits: Mapping[tuple[int, str], Edit]) -> None:
    for layer, site in edits:
        if site not in SITES:
            raise ValueError(f"site must be one of {SITES}, got {site!r}")
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer} out of range for {len(layers)} attention layers")


def _apply(fn: Edit, x: torch.Tensor, heads: int) -> torch.Tensor:
    y = fn(x)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(
            f"a site edit must return a tensor of shape {tuple(x.shape)} ({heads} heads), got {shape}"
        )
    return y


def _slice_hook(pairs: list[tuple[HeadSlice, Edit]]) -> Callable[[torch.Tensor], torch.Tensor]:
    def edit(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        for sl, fn in pairs:
            width = sl.heads * sl.head_dim
            part = t[..., sl.start : sl.start + width]
            heads = part.unflatten(-1, (sl.heads, sl.head_dim))
            t[..., sl.start : sl.start + width] = _apply(fn, heads, sl.heads).flatten(-2)
        return t

    return edit


@contextmanager
def head_hooks(
    model: nn.Module,
    edits: Mapping[tuple[int, str], Edit],
    *,
    mlp_edits: Mapping[int, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    layers: Sequence[AttentionLayer] | None = None,
) -> Iterator[None]:
    """Apply ``edits = {(layer index, site): fn}`` (and ``mlp_edits = {layer: fn}`` on the MLP
    output ``(B, N, D)``) to every forward pass while active; an edit that only stores its input
    and returns it records the site.

    Raises:
        HookError: ``mlp_edits`` on a layer whose MLP could not be located.
        ValueError: an unknown site or layer; an edit that changes the shape.
    """
    layers = list(attention_layers(model) if layers is None else layers)
    _check_edits(layers, edits)
    grouped: dict[tuple[int, bool], list[tuple[HeadSlice, Edit]]] = {}
    modules: dict[int, nn.Module] = {}
    points: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    whole: list[tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]] = []
    for (i, site), fn in edits.items():
        target = layers[i].sites[site]
        if isinstance(target, str):
            count = layers[i].heads_of(site)
            points[target] = lambda t, fn=fn, n=count: _apply(fn, t, n)
        else:
            grouped.setdefault((id(target.module), target.inputs), []).append((target, fn))
            modules[id(target.module)] = target.module
    for i, fn in (mlp_edits or {}).items():
        layer = layers[i]
        if not layer.mlp_found:
            raise HookError(
                f"cannot locate the MLP of the block of {layer.name}: MLP outputs cannot be frozen"
            )
        if isinstance(layer.mlp, str):
            points[layer.mlp] = fn
        elif layer.mlp is not None:
            whole.append((layer.mlp, fn))
    with ExitStack() as stack:
        for (key, inputs), pairs in grouped.items():
            edit = _slice_hook(pairs)
            if inputs:
                handle = modules[key].register_forward_pre_hook(
                    lambda m, args, e=edit: (e(args[0]), *args[1:])
                )
            else:
                handle = modules[key].register_forward_hook(lambda m, args, out, e=edit: e(out))
            stack.callback(handle.remove)
        for module, fn in whole:
            stack.callback(module.register_forward_hook(lambda m, args, out, e=fn: e(out)).remove)
        if points:  # TransformerLens' own API: its hooks see (B, N, h, d) through hook conversions
            fwd = [(name, lambda t, hook, e=fn: e(t)) for name, fn in points.items()]
            stack.enter_context(model.hooks(fwd_hooks=fwd))
        yield


def head_parameter_masks(
    model: nn.Module, heads: Sequence[tuple[int, int]], *, sites: Sequence[str] = SITES
) -> dict[nn.Parameter, torch.Tensor]:
    """``{parameter: bool mask}`` of the weight entries that belong to ``heads = [(layer, head)]``
    alone: the head's rows of the query/key/value projections (and their biases) and its columns
    of the output projection (whose bias is shared by all heads and so is left out).

    Raises:
        HookError: for TransformerLens models (their weights sit behind the bridge).
        ValueError: a head out of range, or a key/value site on a model with grouped key/value heads.
    """
    layers = attention_layers(model)
    masks: dict[nn.Parameter, torch.Tensor] = {}
    for i, h in heads:
        if not 0 <= i < len(layers) or not 0 <= h < layers[i].num_heads:
            raise ValueError(f"head ({i}, {h}) out of range for the model's attention layers")
        layer = layers[i]
        for site in sites:
            target = layer.sites[site]
            if isinstance(target, str):
                raise HookError(
                    "head_parameter_masks needs module projections; TransformerLens models are not supported"
                )
            if site in ("k", "v") and layer.num_kv_heads != layer.num_heads:
                raise ValueError(
                    f"{layer.name} shares key/value heads (GQA): its k/v weights belong to several heads"
                )
            for param, index in target.weight_slices(h):
                mask = masks.setdefault(param, torch.zeros_like(param, dtype=torch.bool))
                mask[index] = True
    return masks


def logits_of(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``(B, N, V)`` of a causal LM on ``tokens (B, N)``: attnzoo's
    :class:`~attnzoo.models.CausalLM` and TransformerLens models are called on the tokens,
    ``transformers`` models with ``input_ids=`` (their ``.logits``)."""
    from attnzoo.analysis.hf import uses_transformers

    if uses_transformers(model) and not _is_transformer_lens(model):
        out = model(input_ids=tokens)
    else:
        out = model(tokens)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise HookError(
            f"{type(model).__name__} did not return next-token logits (B, N, V) for tokens (B, N)"
        )
    return logits
