"""The per-rank checks shared by the sequence-parallel softmax attentions (ring, Ulysses): each rank
validates its own ``q, k, v`` shards and reports their layout, which :func:`attnzoo.distributed._comm.agree`
then compares across ranks so that a mismatch is an error on every rank."""

from __future__ import annotations

import torch

from attnzoo.checks import check_tensor
from attnzoo.distributed._comm import dtype_code

__all__ = ["check_shards", "layout_names", "shard_layout"]


def check_shards(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: object, *, ndim: int, causal: object = False
) -> None:
    """Validate this rank's shards: ``q`` of ``ndim`` dimensions, ``k`` of its shape, ``v`` of its
    shape but the last, one dtype and device for the three, ``causal`` a bool and ``scale`` a
    float or ``None``."""
    check_tensor(q, "q", ndim=ndim, finite=False)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    check_tensor(k, "k", shape=q.shape, finite=False)
    check_tensor(v, "v", shape=(*q.shape[:-1], None), finite=False)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")


def shard_layout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: object, scale: object
) -> list[int]:
    """Validate this rank's shards ``q, k: (B, h, n, d)``, ``v: (B, h, n, d_v)`` (:func:`check_shards`);
    return ``[B, h, n, d, d_v, causal, dtype code]`` (named by :func:`layout_names`)."""
    check_shards(q, k, v, scale, ndim=4, causal=causal)
    return [*q.shape, v.shape[-1], int(causal), dtype_code(q.dtype)]


def layout_names(shard: str = "shard length") -> list[str]:
    """What each entry of :func:`shard_layout` is, for the cross-rank error messages; ``shard``
    names the sequence dimension."""
    return ["batch size", "number of heads", shard, "head dim of q/k", "head dim of v", "causal", "dtype"]
