"""ViT-tiny with a pluggable token mixer (Dosovitskiy et al., "An Image is Worth 16x16 Words",
2021, arXiv:2010.11929, at toy scale).

``image -> patch embedding (conv, stride = patch) + learned positions [+ prefix tokens] ->
depth x MixerBlock -> LN -> mean over tokens -> linear head``. 2-D mixers receive the patch
grid size; mixers that expect prefix tokens (``num_prefix_tokens``, e.g. a class token) get that
many learned tokens prepended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

import attnzoo
from attnzoo.checks import check_tensor
from attnzoo.models.blocks import MixerBlock
from attnzoo.models.build import build_mechanism

__all__ = ["ViTTiny"]


class ViTTiny(nn.Module):
    """``images (B, C_in, H, W) -> logits (B, num_classes)``.

    Args:
        image_size: ``(H, W)`` of the inputs; each must be divisible by ``patch_size``.
        patch_size: side of a square patch.
        in_chans: input channels.
        num_classes: outputs.
        dim: width D (replaces the mixer card's ``dim``).
        depth: number of blocks.
        mixer: registered name of a 1-D or 2-D token mixer (used non-causally); its card's
            configuration is fitted to ``dim`` and to the patch grid (:mod:`attnzoo.models.build`).
        mlp_ratio: MLP width multiple in every block.
        mixer_overrides: constructor kwargs replacing the mixer card's ``bench`` values.
    """

    HOSTS: ClassVar[dict[str, Any]] = {"family": "token_mixer", "spatial_dims": (1, 2), "causal": False}
    """What the model hosts, as :func:`attnzoo.models.build.refusal` takes it."""

    def __init__(
        self,
        image_size: tuple[int, int],
        patch_size: int,
        in_chans: int,
        num_classes: int,
        dim: int,
        depth: int,
        mixer: str,
        *,
        mlp_ratio: float = 2.0,
        mixer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        h, w = image_size
        if patch_size <= 0 or h % patch_size or w % patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size={patch_size}")
        if depth <= 0:
            raise ValueError(f"depth must be positive, got {depth}")
        self.grid = (h // patch_size, w // patch_size)
        self.in_chans = in_chans
        self.image_size = (h, w)
        n = self.grid[0] * self.grid[1]
        two_d = attnzoo.card(mixer).spatial_dims == 2
        self.patch = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        mixers = [
            build_mechanism(
                mixer,
                dim,
                **self.HOSTS,
                seq_len=n,
                size=self.grid if two_d else (n,),
                overrides=mixer_overrides,
            )
            for _ in range(depth)
        ]
        self.num_prefix_tokens = int(getattr(mixers[0], "num_prefix_tokens", 0))
        self.spatial_dims = mixers[0].card.spatial_dims
        self.prefix = nn.Parameter(torch.zeros(1, self.num_prefix_tokens, dim))
        self.pos = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + n, dim))
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.prefix, std=0.02)
        self.blocks = nn.ModuleList(MixerBlock(m, dim, mlp_ratio) for m in mixers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor(images, "images", ndim=4)
        if tuple(images.shape[1:]) != (self.in_chans, *self.image_size):
            raise ValueError(
                f"images must have shape (B, {self.in_chans}, {self.image_size[0]}, {self.image_size[1]}), "
                f"got {tuple(images.shape)}"
            )
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        kwargs = {"size": self.grid} if self.spatial_dims == 2 else {}
        for block in self.blocks:
            x = block(x, **kwargs)
        return self.head(self.norm(x).mean(dim=1))
