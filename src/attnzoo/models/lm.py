"""A small causal language model with a pluggable token mixer.

``tokens -> embedding (+ learned positions) -> depth x [x + mixer([conv] LN x), x + MLP(LN x)] ->
LN -> linear head``, the backbone attnzoo uses for every sequence task, with the mechanism chosen
by name. With ``base_conv=k`` the blocks alternate between Zoology's gated convolution
(:class:`~attnzoo.models.blocks.BaseConv`) and the mechanism, as Zoology's ``Hybrid`` mixer does
(block ``i`` is the convolution when ``i`` is even): at ``depth=2``, no positions and no MLP this is
the model of Zoology's MQAR experiments (``d_model`` 64, ``n_layers`` 2, identity state mixer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from attnzoo.checks import check_tensor
from attnzoo.models.blocks import BaseConv, MixerBlock
from attnzoo.models.build import build_mechanism

__all__ = ["CausalLM"]


class CausalLM(nn.Module):
    """Causal LM: ``tokens (B, N) int64 -> logits (B, N, vocab_size)``.

    Args:
        vocab_size: number of token ids.
        dim: model width D (replaces the mixer card's ``dim``).
        depth: number of blocks.
        mixer: registered name of a causal 1-D token mixer; its card's configuration is fitted to
            ``dim`` and to ``max_len`` (:mod:`attnzoo.models.build`), so a local kernel fitted to
            ``max_len`` needs sequences that long.
        max_len: longest sequence; with ``positional=True`` it sizes the position table.
        mlp_ratio: MLP width multiple in every block; ``0`` for mixer-only blocks.
        positional: add learned absolute position embeddings.
        short_conv: kernel size of a causal depthwise convolution before every mixer (``0``: none).
        base_conv: kernel size of the BaseConv blocks that take every other block (``0``: none,
            every block holds the mechanism); needs ``depth >= 2``.
        tie_embeddings: share the token embedding with the output head (no head bias), as Zoology's
            language model does; the embedding is then drawn from ``N(0, 0.02^2)`` (GPT-2's init)
            so that the initial logits are small.
        mixer_overrides: constructor kwargs replacing the mixer card's ``bench`` values.
    """

    HOSTS: ClassVar[dict[str, Any]] = {"family": "token_mixer", "spatial_dims": 1, "causal": True}
    """What the model hosts, as :func:`attnzoo.models.build.refusal` takes it."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        mixer: str,
        *,
        max_len: int,
        mlp_ratio: float = 0.0,
        positional: bool = True,
        short_conv: int = 0,
        base_conv: int = 0,
        tie_embeddings: bool = False,
        mixer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (("vocab_size", vocab_size), ("depth", depth), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if isinstance(base_conv, bool) or not isinstance(base_conv, int) or base_conv < 0:
            raise ValueError(f"base_conv must be a non-negative int, got {base_conv!r}")
        if not isinstance(tie_embeddings, bool):
            raise TypeError(f"tie_embeddings must be a bool, got {tie_embeddings!r}")
        if base_conv and depth < 2:
            raise ValueError(f"base_conv={base_conv} alternates blocks and needs depth >= 2, got {depth}")
        self.vocab_size = vocab_size
        self.dim = dim
        self.max_len = max_len
        self.mixer_name = mixer
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim)) if positional else None
        if self.pos is not None:
            nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            MixerBlock(
                BaseConv(dim, base_conv)
                if base_conv and i % 2 == 0
                else build_mechanism(
                    mixer,
                    dim,
                    **self.HOSTS,
                    seq_len=max_len,
                    size=(max_len,),
                    overrides=mixer_overrides,
                ),
                dim,
                mlp_ratio,
                short_conv,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=not tie_embeddings)
        if tie_embeddings:
            nn.init.normal_(self.embed.weight, std=0.02)
            self.head.weight = self.embed.weight

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states ``(B, N, D)``; :attr:`head` maps them to logits."""
        check_tensor(tokens, "tokens", ndim=2, floating=False, finite=False)
        if tokens.dtype != torch.long:
            raise TypeError(f"tokens must be int64, got {tokens.dtype}")
        n = tokens.shape[1]
        if n > self.max_len:
            raise ValueError(f"tokens has length {n} > max_len={self.max_len}")
        x = self.embed(tokens)
        if self.pos is not None:
            x = x + self.pos[:, :n]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(tokens))
