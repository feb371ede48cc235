"""timm ViT attention slots: the classes :func:`attnzoo.integrations.timm.vit_attention` makes, the
patch-grid hook of :func:`~attnzoo.integrations.timm.bind` and the prefix-token attention of 2-D mixers.
The design is described in :mod:`attnzoo.integrations.timm`."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import attnzoo
from attnzoo.capture import module_scope
from attnzoo.checks import check_divisible
from attnzoo.integrations import IntegrationError
from attnzoo.integrations._timm_common import (
    AttentionMaps,
    build,
    check_options,
    constructor_params,
    expose,
    require_family,
)
from attnzoo.kernels import attention, merge_heads, split_heads

__all__ = ["PatchGrid", "PrefixAttention", "TimmViTAttention", "vit_attention_class"]

_CONTRACT_INPUTS = {"self", "x", "size", "key_padding_mask"}  # key_padding_mask: optional, per batch


class PatchGrid:
    """Forward hook of a timm ``PatchEmbed``: keeps the ``(H, W)`` token grid of the last image it
    embedded (``PatchEmbed.dynamic_feat_size`` of the image size, so dynamic image sizes and padding
    are followed).

    A ``PatchEmbed`` with ``strict_img_size`` accepts one image size only, so its ``grid_size`` is
    known before any forward (then also in graphs that trace through the embedding, e.g. timm's fx
    feature extraction); the hook skips fx tracing proxies."""

    def __init__(self, embed: nn.Module) -> None:
        self.size: tuple[int, int] | None = tuple(embed.grid_size) if embed.strict_img_size else None

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        image = args[0] if args else kwargs["x"]
        if isinstance(image, torch.fx.Proxy):
            return
        h, w = module.dynamic_feat_size((int(image.shape[-2]), int(image.shape[-1])))
        self.size = (int(h), int(w))


class PrefixAttention(nn.Module):
    """Softmax attention of the first ``P`` tokens over all ``N`` tokens, with the parameter layout
    of timm's ``Attention``: ``qkv = Linear(C, 3C)`` (``[q | k | v]``, heads contiguous inside each)
    and ``proj = Linear(C, C)``.

    ``forward(x (B, N, C), p) -> (B, P, C)``: for the same weights, the first ``P`` rows of timm's
    ``Attention(x)``; only the prefix queries are projected, so the cost is ``O(P N C + N C^2)``.
    """

    def __init__(
        self, dim: int, num_heads: int, *, qkv_bias: bool, proj_bias: bool, attn_drop: float, proj_drop: float
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, p: int) -> torch.Tensor:
        c = x.shape[-1]
        w_q, w_kv = self.qkv.weight.split([c, 2 * c])
        b_q, b_kv = self.qkv.bias.split([c, 2 * c]) if self.qkv.bias is not None else (None, None)
        q = split_heads(F.linear(x[:, :p], w_q, b_q), self.num_heads)
        k, v = split_heads(F.linear(x, w_kv, b_kv), 2 * self.num_heads).chunk(2, dim=1)
        with module_scope(self):
            out = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(merge_heads(out)))


class TimmViTAttention(nn.Module):
    """timm's ViT attention contract around an attnzoo token mixer (the base of the classes
    :func:`~attnzoo.integrations.timm.vit_attention` returns).

    ``cls(dim, num_heads=, qkv_bias=, qk_norm=, scale_norm=, proj_bias=, attn_drop=, proj_drop=,
    norm_layer=, device=, dtype=)`` as timm's ``Block`` calls it; ``forward(x (B, N, C),
    attn_mask=None, is_causal=False) -> (B, N, C)``.

    Children: ``mechanism`` (the attnzoo mixer), ``prefix_attn`` (2-D mixers without native prefix
    support, when the model has prefix tokens), ``attn_drop`` (:class:`AttentionMaps`, where
    ``AttentionExtract`` finds the attention maps) and ``proj_drop`` (output dropout when the mixer
    has none of its own).
    """

    mechanism_name: ClassVar[str]
    mechanism_kwargs: ClassVar[Mapping[str, Any]]
    fixed_inputs: ClassVar[Mapping[str, torch.Tensor]]
    prefix_tokens: ClassVar[int]

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        card = attnzoo.card(self.mechanism_name)
        params = constructor_params(attnzoo.mechanism_class(card.name))
        where = f"a timm ViT block (dim={dim}, num_heads={num_heads})"
        if scale_norm:
            raise IntegrationError(
                f"scale_norm=True (timm's norm of the attention output before proj) cannot be honoured by "
                f"{card.name!r}: build the model with scale_attn_norm=False"
            )
        if qk_norm and "qk_norm" not in params:
            raise IntegrationError(
                f"qk_norm=True cannot be honoured: {card.name!r} has no query/key normalisation; "
                "build the model with qk_norm=False"
            )
        if attn_drop and "attn_drop" not in params:
            raise IntegrationError(
                f"attn_drop={attn_drop} cannot be honoured: {card.name!r} has no attention dropout; "
                "build the model with attn_drop_rate=0"
            )
        given = {
            "num_heads": num_heads,
            "qkv_bias": qkv_bias,
            "qk_norm": qk_norm,
            "attn_drop": attn_drop,
            "proj_drop": proj_drop,
            "causal": False,
        }
        kwargs = {"dim": dim, **{k: v for k, v in given.items() if k in params}, **self.mechanism_kwargs}
        self.mechanism = build(card, kwargs, where)
        self.spatial_dims = card.spatial_dims
        self.native_prefix = "num_prefix_tokens" in params
        self.num_prefix_tokens: int | None = None
        self.prefix_attn: PrefixAttention | None = None
        if card.spatial_dims == 2:
            self.num_prefix_tokens = (
                self.mechanism.num_prefix_tokens if self.native_prefix else self.prefix_tokens
            )
            if self.num_prefix_tokens and not self.native_prefix:
                self.prefix_attn = PrefixAttention(
                    dim,
                    num_heads,
                    qkv_bias=qkv_bias,
                    proj_bias=proj_bias,
                    attn_drop=attn_drop,
                    proj_drop=proj_drop,
                )
        self.attn_drop = AttentionMaps()
        own_drop = "proj_drop" in params or not proj_drop
        self.proj_drop = nn.Identity() if own_drop else nn.Dropout(proj_drop)
        for key, value in self.fixed_inputs.items():
            self.register_buffer(key, value.clone(), persistent=False)
        self.timm_args: dict[str, Any] = {
            "dim": dim,
            "num_heads": num_heads,
            "qkv_bias": qkv_bias,
            "qk_norm": qk_norm,
            "proj_bias": proj_bias,
            "attn_drop": attn_drop,
            "proj_drop": proj_drop,
            "norm_layer": norm_layer,
        }
        self.patch_grid: PatchGrid | None = None
        self.to(device=device, dtype=dtype)

    def extra_repr(self) -> str:
        prefix = "" if self.num_prefix_tokens is None else f", num_prefix_tokens={self.num_prefix_tokens}"
        return f"mechanism={self.mechanism_name!r}{prefix}"

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        name = self.mechanism_name
        if attn_mask is not None:
            raise IntegrationError(
                f"attn_mask cannot be honoured: the attnzoo token mixer {name!r} takes no attention mask"
            )
        if is_causal:
            raise IntegrationError(
                f"is_causal=True cannot be honoured: {name!r} mixes the tokens of a ViT bidirectionally"
            )
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 3:
            raise IntegrationError(f"x must be (B, N, C) tokens, got shape {tuple(x.shape)}")
        return expose(self.attn_drop, lambda: self._mix(x))

    def _grid_size(self, x: torch.Tensor) -> tuple[int, int]:
        """The model's patch grid for ``x``, checked against its token count."""
        name = self.mechanism_name
        if self.patch_grid is None:
            raise IntegrationError(
                f"the patch grid is unknown: {name!r} is a 2-D mixer and reads the (H, W) grid from the "
                "model's patch embedding; call attnzoo.integrations.timm.bind(model) once after "
                "timm.create_model(..., attn_layer=vit_attention(...)) (swap() binds by itself)"
            )
        if self.patch_grid.size is None:
            raise IntegrationError(
                "the patch grid is unknown: the model's patch_embed has not embedded an image yet, and "
                f"{name!r} reads the grid from it (run the model, not its blocks alone)"
            )
        h, w = self.patch_grid.size
        p = self.num_prefix_tokens or 0
        if x.shape[1] != p + h * w:
            raise IntegrationError(
                f"x has {x.shape[1]} tokens, but {name!r} expects {p} prefix token(s) + the {h}x{w} patch "
                f"grid of the last image = {p + h * w}: patch dropout, token merging or a block called on "
                "other tokens breaks the grid a 2-D mixer needs"
            )
        for key in self.fixed_inputs:
            if tuple(getattr(self, key).shape) != (h, w):
                raise IntegrationError(
                    f"{key} has shape {tuple(getattr(self, key).shape)}, but the patch grid is {(h, w)}"
                )
        return h, w

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims == 1:
            return self.proj_drop(self.mechanism(x))
        size = self._grid_size(x)
        b = x.shape[0]
        extra = {key: getattr(self, key).expand(b, *size) for key in self.fixed_inputs}
        if self.native_prefix or not self.num_prefix_tokens:
            return self.proj_drop(self.mechanism(x, size=size, **extra))
        p = self.num_prefix_tokens
        prefix = self.prefix_attn(x, p)
        grid = self.proj_drop(self.mechanism(x[:, p:], size=size, **extra))
        return torch.cat([prefix, grid], dim=1)


def _forward_inputs(cls: type) -> list[str]:
    """Forward inputs of a token mixer beyond the family contract (e.g. ``region_map``)."""
    return [p for p in inspect.signature(cls.compute).parameters if p not in _CONTRACT_INPUTS]


def vit_attention_class(name: str, kwargs: Mapping[str, Any]) -> type[TimmViTAttention]:
    """The :class:`TimmViTAttention` subclass for mechanism ``name`` with options ``kwargs``."""
    card = require_family(name, "token_mixer", "a timm ViT attention slot")
    if card.causal_only:
        raise IntegrationError(
            f"{card.name!r} is causal only: each token would see only the tokens before it in raster order, "
            "while a ViT mixes all image tokens with each other; use a bidirectional mixer (e.g. 'vig', "
            "'linear_attention' or 'mhsa')"
        )
    if card.spatial_dims not in (1, 2):
        raise IntegrationError(
            f"{card.name!r} mixes {card.spatial_dims}-D inputs; a ViT has a 1-D token "
            "sequence on a 2-D patch grid"
        )
    options = dict(kwargs)
    if options.get("causal"):
        raise IntegrationError("causal=True: a ViT mixes its tokens bidirectionally")
    mech_cls = attnzoo.mechanism_class(card.name)
    native = "num_prefix_tokens" in constructor_params(mech_cls)
    prefix = 1
    if card.spatial_dims == 2 and not native:
        prefix = options.pop("num_prefix_tokens", 1)
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise IntegrationError(f"num_prefix_tokens must be a non-negative int, got {prefix!r}")
    fixed: dict[str, torch.Tensor] = {}
    for key in _forward_inputs(mech_cls):
        if key not in options:
            raise IntegrationError(
                f"{card.name!r} needs the forward input {key}, which timm's attention call "
                f"(x, attn_mask, is_causal) cannot pass per image; give a fixed one over the patch grid: "
                f"vit_attention({card.name!r}, {key}=tensor (H, W))"
            )
        value = options.pop(key)
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{key} must be a torch.Tensor over the patch grid (H, W), got {type(value).__name__}"
            )
        if value.ndim != 2:
            raise IntegrationError(
                f"{key} must be one (H, W) map for every image, got shape {tuple(value.shape)}"
            )
        fixed[key] = value.detach()
    check_options(card, options, {"dim": "its embed_dim"})
    namespace = {
        "mechanism_name": card.name,
        "mechanism_kwargs": dict(options),
        "fixed_inputs": fixed,
        "prefix_tokens": prefix,
        "__module__": "attnzoo.integrations.timm",
        "__doc__": f"timm ViT attention running attnzoo's {card.name!r} with {dict(options)}: {card.summary}",
    }
    cls_name = f"{mech_cls.__name__}ViTAttention"
    return type(cls_name, (TimmViTAttention,), {**namespace, "__qualname__": cls_name})
