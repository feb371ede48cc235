"""Split a sequence into equal contiguous shards across ranks and gather it back, with autograd.

Gradients follow the SPMD convention of every :mod:`attnzoo.distributed` path: the objective is
the *sum* of the per-rank losses. So

* :func:`shard_sequence` (forward: keep this rank's slice of a tensor every rank holds in full)
  gives the replicated input the full gradient on every rank (backward: all-gather of the slices);
* :func:`gather_sequence` (forward: all-gather of the shards) gives each shard the sum over ranks
  of the gradients reaching its slice (backward: reduce-scatter).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from attnzoo.checks import check_tensor
from attnzoo.distributed._comm import agree, all_gather, group_info, guarded

__all__ = ["gather_sequence", "shard_sequence"]


def _axis(x: torch.Tensor, dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for a tensor of shape {tuple(x.shape)}")
    return dim % x.dim()


def _dims(x: torch.Tensor) -> list[int]:
    """A rank-independent description of ``x``'s shape: the rank, then the sizes (padded to 8)."""
    if x.dim() > 8:
        raise ValueError(f"sequence tensors may have at most 8 dimensions, got shape {tuple(x.shape)}")
    return [x.dim(), *x.shape, *([0] * (8 - x.dim()))]


_DIM_NAMES = ["rank of the tensor", *(f"size of dimension {i}" for i in range(8))]


class _Shard(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, dim: int, group: dist.ProcessGroup
    ) -> torch.Tensor:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        ctx.dim, ctx.group = dim, group
        n = x.shape[dim] // world
        return x.narrow(dim, rank * n, n).clone()

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous()
        parts = [torch.empty_like(grad) for _ in range(dist.get_world_size(ctx.group))]
        with guarded("the backward of shard_sequence (all_gather)", ctx.group):
            dist.all_gather(parts, grad, group=ctx.group)
        return torch.cat(parts, dim=ctx.dim), None, None


def shard_sequence(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """This rank's contiguous shard of ``x`` along ``dim``.

    Every rank passes the same full tensor; rank ``r`` of ``W`` gets positions
    ``[r N / W, (r + 1) N / W)``. ``x.shape[dim]`` must be divisible by ``W``. The full gradient of
    the summed per-rank losses reaches ``x`` on every rank.
    """
    check_tensor(x, "x", finite=False, floating=False)
    group, _, world = group_info(group)

    def check() -> list[int]:
        axis = _axis(x, dim)
        if x.shape[axis] % world:
            raise ValueError(
                f"x has {x.shape[axis]} positions along dim={dim}, not divisible by the {world} ranks "
                "of the process group (shards must have equal lengths)"
            )
        return _dims(x)

    agree(check, _DIM_NAMES, group=group, device=x.device)
    return _Shard.apply(x, _axis(x, dim), group)


def gather_sequence(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate every rank's shard ``x`` along ``dim``, in rank order (the inverse of
    :func:`shard_sequence`). Shards must have equal shapes on every rank."""
    check_tensor(x, "x", finite=False, floating=False)
    group, _, _ = group_info(group)

    def check() -> list[int]:
        _axis(x, dim)
        return _dims(x)

    agree(check, _DIM_NAMES, group=group, device=x.device)
    return all_gather(x, group, dim=_axis(x, dim))
