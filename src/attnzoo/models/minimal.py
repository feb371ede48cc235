"""The reduced transformer blocks of Bermeitinger et al., "Reducing the Transformer Architecture to a
Minimum" (2024, arXiv 2410.13732): MLP-free blocks around the reduced attention of
:mod:`attnzoo.mechanisms.token_mixer.minimal_attention`, and their parameter counts.

A variant names an attention configuration (a label of the ``minimal_attention`` card's
``bench["variants"]``, the configurations ``attnzoo bench`` measures) and whether the block keeps its
MLP. The blocks are :class:`~attnzoo.models.blocks.MixerBlock` s, pre-norm and residual as every
attnzoo backbone's (the paper's normalisation and residual layout were not available to attnzoo); an
MLP-free block is ``x + attention(LN(x))``. :class:`~attnzoo.models.ViTTiny` and
:class:`~attnzoo.models.CausalLM` build exactly these blocks from ``mixer="minimal_attention"``,
the variant's ``mixer_overrides`` and ``mlp_ratio=0`` for MLP-free variants (:func:`build_vit`,
:func:`build_lm`), and so does ``attnzoo eval`` with :func:`eval_arguments`::

    attnzoo eval digits --mechanisms minimal_attention \\
        --mechanism-kwargs 'minimal_attention:{"qk": "shared", "value_proj": false, "out_proj": false}' \\
        --model-kwargs '{"mlp_ratio": 0}'
"""

from __future__ import annotations

import json
from typing import Any

import attnzoo
from attnzoo.checks import check_divisible, check_float, check_int
from attnzoo.models.blocks import MixerBlock
from attnzoo.models.lm import CausalLM
from attnzoo.models.vit import ViTTiny

__all__ = [
    "MECHANISM",
    "VARIANTS",
    "attention_parameters",
    "block_parameters",
    "build_lm",
    "build_vit",
    "eval_arguments",
    "minimal_block",
    "parameter_table",
    "variant_settings",
]

MECHANISM = "minimal_attention"

VARIANTS: dict[str, tuple[str, bool]] = {
    "standard": ("standard", True),
    "no-mlp": ("standard", False),
    "merged": ("merged", False),
    "merged-1head": ("merged-1head", False),
    "shared": ("shared", False),
    "no-vo": ("no-vo", False),
    "minimal": ("minimal", False),
}
"""Model variant -> (attention variant of the card's ``bench["variants"]``, keeps the MLP): the
standard block, then the paper's reductions, each without the MLP, down to ``minimal`` (symmetric
similarity, no value or output matrix, no MLP)."""


def variant_settings(variant: str) -> tuple[dict[str, Any], bool]:
    """The ``minimal_attention`` constructor overrides of ``variant`` and whether its block keeps the
    MLP; ``ValueError`` naming ``variant`` for an unknown one."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    attention_label, mlp = VARIANTS[variant]
    return dict(attnzoo.card(MECHANISM).bench["variants"][attention_label]), mlp


def _block_settings(variant: str, mlp_ratio: object) -> tuple[dict[str, Any], float]:
    """``variant``'s attention overrides and its blocks' MLP ratio (``mlp_ratio``, or 0 without MLP)."""
    overrides, mlp = variant_settings(variant)
    ratio = check_float(mlp_ratio, "mlp_ratio", positive=True)
    return overrides, ratio if mlp else 0.0


def minimal_block(
    dim: int, num_heads: int = 4, *, variant: str = "minimal", causal: bool = False, mlp_ratio: float = 2.0
) -> MixerBlock:
    """A block ``x + attention(LN(x))`` [``+ MLP(LN(.))`` when the variant keeps it], ``(B, N, dim)
    -> (B, N, dim)``, with ``minimal_attention`` configured as ``variant`` (whose ``num_heads``, if
    it sets one, replaces ``num_heads``); ``mlp_ratio`` is the MLP width of variants that keep it."""
    overrides, ratio = _block_settings(variant, mlp_ratio)
    mixer = attnzoo.create(MECHANISM, **{"dim": dim, "num_heads": num_heads, "causal": causal, **overrides})
    return MixerBlock(mixer, dim, ratio)


def build_vit(
    variant: str,
    *,
    image_size: tuple[int, int],
    patch_size: int,
    in_chans: int,
    num_classes: int,
    dim: int,
    depth: int,
    mlp_ratio: float = 2.0,
) -> ViTTiny:
    """:class:`ViTTiny` whose blocks are ``variant``'s (see :func:`minimal_block`)."""
    overrides, ratio = _block_settings(variant, mlp_ratio)
    return ViTTiny(
        image_size,
        patch_size,
        in_chans,
        num_classes,
        dim,
        depth,
        MECHANISM,
        mlp_ratio=ratio,
        mixer_overrides=overrides,
    )


def build_lm(
    variant: str,
    *,
    vocab_size: int,
    dim: int,
    depth: int,
    max_len: int,
    mlp_ratio: float = 2.0,
    **options: Any,
) -> CausalLM:
    """:class:`CausalLM` whose blocks are ``variant``'s (causal); ``options`` are CausalLM's other
    keywords (``positional``, ``short_conv``, ``base_conv``, ``tie_embeddings``)."""
    overrides, ratio = _block_settings(variant, mlp_ratio)
    return CausalLM(
        vocab_size,
        dim,
        depth,
        MECHANISM,
        max_len=max_len,
        mlp_ratio=ratio,
        mixer_overrides=overrides,
        **options,
    )


def attention_parameters(
    dim: int,
    num_heads: int,
    *,
    qk: str = "separate",
    value_proj: bool = True,
    out_proj: bool = True,
    qkv_bias: bool = False,
) -> int:
    """Parameters of ``minimal_attention`` with these options: query/key ``2 C^2`` (separate), ``h C^2``
    (merged) or ``C^2`` (shared), value ``C^2``, output ``C^2 + C``, and the biases (``C`` per
    projection, ``h C`` for the merged form's key vectors)."""
    check_divisible(dim, num_heads, "dim", "num_heads")
    c, h = dim, num_heads
    weights = {"separate": 2 * c * c, "merged": h * c * c, "shared": c * c}
    biases = {"separate": 2 * c, "merged": h * c, "shared": c}
    if qk not in weights:
        raise ValueError(f"qk must be one of {sorted(weights)}, got {qk!r}")
    total = weights[qk] + (biases[qk] if qkv_bias else 0)
    if value_proj:
        total += c * c + (c if qkv_bias else 0)
    if out_proj:
        total += c * c + c
    return total


def block_parameters(
    dim: int, num_heads: int = 4, *, variant: str = "minimal", mlp_ratio: float = 2.0
) -> int:
    """Parameters of :func:`minimal_block`: the attention's, one LayerNorm (``2 C``), and with the
    MLP a second LayerNorm and ``2 C H + H + C`` for the hidden width ``H = round(C r)``."""
    overrides, ratio = _block_settings(variant, mlp_ratio)
    heads = int(overrides.pop("num_heads", num_heads))
    c = check_int(dim, "dim")
    total = attention_parameters(c, heads, **overrides) + 2 * c
    if ratio:
        hidden = max(1, round(c * ratio))
        total += 2 * c + 2 * c * hidden + hidden + c
    return total


def parameter_table(dim: int, num_heads: int = 4, *, mlp_ratio: float = 2.0) -> list[dict[str, Any]]:
    """One row per variant: ``variant``, ``attention`` and ``block`` parameters and the block's
    ``saving`` against the standard block (a fraction; negative when the variant is larger)."""
    standard = block_parameters(dim, num_heads, variant="standard", mlp_ratio=mlp_ratio)
    rows = []
    for variant in VARIANTS:
        overrides, _ = variant_settings(variant)
        heads = int(overrides.pop("num_heads", num_heads))
        block = block_parameters(dim, num_heads, variant=variant, mlp_ratio=mlp_ratio)
        rows.append(
            {
                "variant": variant,
                "attention": attention_parameters(dim, heads, **overrides),
                "block": block,
                "saving": 1.0 - block / standard,
            }
        )
    return rows


def eval_arguments(variant: str) -> list[str]:
    """The ``attnzoo eval`` arguments that train ``variant``: the mechanism, its overrides and, for an
    MLP-free variant, ``--model-kwargs '{"mlp_ratio": 0}'`` (the backbone's blocks lose the MLP)."""
    overrides, mlp = variant_settings(variant)
    args = ["--mechanisms", MECHANISM]
    if overrides:
        args += ["--mechanism-kwargs", f"{MECHANISM}:{json.dumps(overrides)}"]
    if not mlp:
        args += ["--model-kwargs", json.dumps({"mlp_ratio": 0})]
    return args
