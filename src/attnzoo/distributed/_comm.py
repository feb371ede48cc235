"""Process-group plumbing shared by the sequence-parallel paths: group lookup, collective input
checks that raise on every rank (instead of leaving the others waiting in a collective), the ring
shift of tensors to the next rank, and the autograd rule for replicated tensors."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

__all__ = ["agree", "all_gather", "dtype_code", "group_info", "replicated", "ring_shift", "wait_all"]


def dtype_code(dtype: torch.dtype) -> int:
    """An integer naming ``dtype`` identically in every process, to compare dtypes in :func:`agree`."""
    return zlib.crc32(str(dtype).encode())


def group_info(group: dist.ProcessGroup | None) -> tuple[dist.ProcessGroup, int, int]:
    """``(group, rank in group, group size)``; ``group=None`` is the default (world) group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "torch.distributed is not initialised: call torch.distributed.init_process_group(...) on every "
            "rank before using attnzoo.distributed"
        )
    group = dist.group.WORLD if group is None else group
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("group: this process is not a member of the given process group")
    return group, rank, dist.get_world_size(group)


def agree(
    check: Callable[[], Sequence[int]],
    names: Sequence[str],
    *,
    group: dist.ProcessGroup,
    device: torch.device,
) -> None:
    """Run the local validation ``check`` and compare the sizes it returns across ranks.

    ``check`` raises ``TypeError``/``ValueError`` for a bad local input, otherwise returns one size
    per entry of ``names`` that every rank must share (e.g. the shard length). One small
    ``all_gather`` tells every rank whether any rank failed, so that all ranks raise together
    instead of leaving the others waiting in a later collective: the failing rank re-raises its own
    error, the others a ``ValueError`` naming the failing ranks; then a size that differs across
    ranks raises a ``ValueError`` naming it and listing its value on each rank.
    """
    error: TypeError | ValueError | None = None
    try:
        sizes = [int(s) for s in check()]
    except (TypeError, ValueError) as err:
        error, sizes = err, [0] * len(names)
    world = dist.get_world_size(group)
    row = torch.tensor([int(error is not None), *sizes], dtype=torch.int64, device=device)
    rows = [torch.empty_like(row) for _ in range(world)]
    dist.all_gather(rows, row, group=group)
    table = torch.stack(rows).cpu()
    if error is not None:
        raise error
    failed = table[:, 0].nonzero().flatten().tolist()
    if failed:
        raise ValueError(
            f"invalid input on rank(s) {failed} of the process group (see the error raised there)"
        )
    for i, name in enumerate(names):
        column = table[:, i + 1]
        if bool((column != column[0]).any()):
            raise ValueError(
                f"{name} must be equal on every rank (equal-length contiguous shards of one sequence); "
                f"got {column.tolist()} on ranks 0..{world - 1}"
            )


def _peer(group: dist.ProcessGroup, rank: int) -> int:
    return dist.get_global_rank(group, rank)


def ring_shift(
    tensors: Sequence[torch.Tensor], group: dist.ProcessGroup, *, tag: int = 0
) -> tuple[list[torch.Tensor], list[dist.Work]]:
    """Start sending ``tensors`` to the next rank of the ring and receiving the previous rank's.

    Returns the receive buffers and the pending requests; :func:`wait_all` them before reading the
    buffers (and before reusing the sent tensors).
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    nxt, prv = _peer(group, (rank + 1) % world), _peer(group, (rank - 1) % world)
    sends = [t.contiguous() for t in tensors]
    recvs = [torch.empty_like(t) for t in sends]
    ops = [dist.P2POp(dist.isend, t, nxt, group, tag) for t in sends]
    ops += [dist.P2POp(dist.irecv, t, prv, group, tag) for t in recvs]
    return recvs, dist.batch_isend_irecv(ops)


def wait_all(works: Sequence[dist.Work]) -> None:
    for work in works:
        work.wait()


class _AllGather(torch.autograd.Function):
    """Forward: every rank's tensor in rank order, stacked on a new leading axis (``dim=None``) or
    concatenated along ``dim``. Backward: each rank gets the sum over ranks of the gradients that
    reached its part (a reduce-scatter, done with ``all_to_all``, which every backend implements,
    for the same traffic)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, group: dist.ProcessGroup, dim: int | None
    ) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.stack(parts) if dim is None else torch.cat(parts, dim=dim)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        world = dist.get_world_size(ctx.group)
        chunks = grad.unbind(0) if ctx.dim is None else grad.chunk(world, dim=ctx.dim)
        sends = [g.contiguous() for g in chunks]
        recvs = [torch.empty_like(g) for g in sends]
        dist.all_to_all(recvs, sends, group=ctx.group)
        return torch.stack(recvs).sum(0), None, None


def all_gather(x: torch.Tensor, group: dist.ProcessGroup, dim: int | None = None) -> torch.Tensor:
    """Every rank's ``x`` in rank order: ``(W, *x.shape)``, or concatenated along ``dim``;
    differentiable (the gradient of the summed per-rank losses reaches each rank's ``x``)."""
    return _AllGather.apply(x, group, dim)


class _Replicated(torch.autograd.Function):
    """Identity forward; backward sums the gradient over the group."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, group: dist.ProcessGroup
    ) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def replicated(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Mark ``x`` as held identically by every rank: its gradient becomes the sum of the per-rank
    gradients, i.e. the gradient of the summed loss, identical on every rank."""
    return _Replicated.apply(x, group)
