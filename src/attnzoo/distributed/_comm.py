"""Process-group plumbing shared by the distributed paths: group lookup, collective input checks that
raise on every rank (instead of leaving the others waiting in a collective), the ring shift of tensors
to the next rank, point-to-point exchanges of variable-size tensors, differentiable all-gather and
all-to-all, the autograd rule for replicated tensors, and :class:`RankFailure`.

Failures. Every communication of :mod:`attnzoo.distributed` runs inside :func:`guarded`: an error of
``torch.distributed`` (a peer that died closes its connections, a peer that hangs lets the process
group's timeout expire) becomes a :class:`RankFailure` naming the operation, this rank and the
group's timeout. The timeout is the process group's own, configurable with
``torch.distributed.init_process_group(timeout=...)``, ``new_group(timeout=...)`` or
``torch.distributed.set_timeout(...)``; ``gloo`` enforces it in its transport, so a rank that waits
for a hung peer raises after it, and the peers waiting on that rank then see its connections close.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

__all__ = [
    "RankFailure",
    "SentBytes",
    "agree",
    "all_gather",
    "all_to_all",
    "count_sent_bytes",
    "dtype_code",
    "exchange",
    "group_info",
    "group_timeout",
    "guarded",
    "replicated",
    "ring_shift",
    "wait_all",
]


class RankFailure(RuntimeError):
    """A collective of :mod:`attnzoo.distributed` did not complete: another rank died, hung past the
    process group's timeout, or left the collective. The process group is unusable afterwards.

    Attributes: ``what`` (the operation), ``rank`` and ``world_size`` (this process in the group),
    ``timeout_s`` (the group's timeout in seconds, ``None`` if the backend does not report it).
    """

    def __init__(self, what: str, rank: int, world_size: int, timeout_s: float | None, cause: BaseException):
        self.what, self.rank, self.world_size, self.timeout_s = what, rank, world_size, timeout_s
        limit = "its timeout" if timeout_s is None else f"its timeout of {timeout_s:g} s"
        super().__init__(
            f"attnzoo.distributed: {what} failed on rank {rank} of {world_size}: another rank died, hung "
            f"or left the collective, or the process group's timeout expired (the group waits {limit}; "
            "set it with torch.distributed.init_process_group(timeout=...), new_group(timeout=...) or "
            "torch.distributed.set_timeout(...)). The process group is unusable now: destroy it and "
            f"restart the job. torch.distributed said: {cause}"
        )


def group_timeout(group: dist.ProcessGroup) -> float | None:
    """The timeout of ``group`` in seconds as its CPU backend (or its first backend) reports it, or
    ``None`` when the backend does not expose it (the error messages then say so)."""
    types = list(getattr(group, "_device_types", []))
    types.sort(key=lambda t: t.type != "cpu")
    for device in types:
        try:
            return group._get_backend(device).options._timeout.total_seconds()
        except (AttributeError, RuntimeError):
            continue
    return None


@contextmanager
def guarded(what: str, group: dist.ProcessGroup) -> Iterator[None]:
    """Turn an error of ``torch.distributed`` raised inside the block into :class:`RankFailure`."""
    try:
        yield
    except RankFailure:
        raise
    except RuntimeError as err:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        raise RankFailure(what, rank, world, group_timeout(group), err) from err


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
    ranks raises a ``ValueError`` naming it and listing its value on each rank. No data moves
    before every rank has passed.
    """
    error: TypeError | ValueError | None = None
    try:
        sizes = [int(s) for s in check()]
    except (TypeError, ValueError) as err:
        error, sizes = err, [0] * len(names)
    world = dist.get_world_size(group)
    row = torch.tensor([int(error is not None), *sizes], dtype=torch.int64, device=device)
    rows = [torch.empty_like(row) for _ in range(world)]
    with guarded("the input check (all_gather of every rank's sizes)", group):
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
    with guarded("the ring shift to the next rank", group):
        return recvs, dist.batch_isend_irecv(ops)


def wait_all(works: Sequence[dist.Work], group: dist.ProcessGroup, what: str = "the ring shift") -> None:
    """Wait for every request of ``works``, each at most the group's timeout (a :class:`RankFailure`
    if one fails). The timeout is passed on explicitly: ``gloo``'s point-to-point requests would
    otherwise wait forever for a peer that hangs."""
    timeout = group_timeout(group)
    limit = None if timeout is None else timedelta(seconds=timeout)
    with guarded(what, group):
        for work in works:
            if limit is None:
                work.wait()
            else:
                work.wait(limit)


@dataclass
class SentBytes:
    """What this process sent to other ranks by :func:`exchange` inside :func:`count_sent_bytes`:
    ``bytes`` (tensor payload, not the transport's framing) and ``messages``."""

    bytes: int = 0
    messages: int = 0


_METERS: list[SentBytes] = []


@contextmanager
def count_sent_bytes() -> Iterator[SentBytes]:
    """Count the point-to-point payload this process sends by :func:`exchange` in the block (the
    executor of core attention disaggregation moves all its data so); nests."""
    meter = SentBytes()
    _METERS.append(meter)
    try:
        yield meter
    finally:
        _METERS.remove(meter)


def exchange(
    sends: Sequence[torch.Tensor | None],
    recv_shapes: Sequence[tuple[int, ...] | None],
    like: torch.Tensor,
    group: dist.ProcessGroup,
    what: str,
    *,
    tag: int = 0,
) -> list[torch.Tensor | None]:
    """Point-to-point exchange of tensors of any sizes with every peer at once.

    ``sends[p]`` goes to rank ``p`` of ``group`` and ``recv_shapes[p]`` is the shape of what rank
    ``p`` sends here (both sides know the sizes, e.g. from a plan); ``None`` or an empty shape
    means nothing. The entry of this rank is copied locally. Returns the received tensors (dtype and
    device of ``like``) by peer.
    """
    rank = dist.get_rank(group)
    received: list[torch.Tensor | None] = [None] * len(recv_shapes)
    ops = []
    for peer, (out, shape) in enumerate(zip(sends, recv_shapes)):
        if peer == rank:
            received[peer] = None if out is None else out.clone()
            continue
        if out is not None and out.numel():
            ops.append(dist.P2POp(dist.isend, out.contiguous(), _peer(group, peer), group, tag))
            for meter in _METERS:
                meter.bytes += out.numel() * out.element_size()
                meter.messages += 1
        if shape is not None and torch.Size(shape).numel():
            buf = like.new_empty(shape)
            received[peer] = buf
            ops.append(dist.P2POp(dist.irecv, buf, _peer(group, peer), group, tag))
    if ops:
        with guarded(what, group):
            works = dist.batch_isend_irecv(ops)
        wait_all(works, group, what)
    return received


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
        with guarded("all_gather", group):
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
        with guarded("the backward of all_gather (all_to_all)", ctx.group):
            dist.all_to_all(recvs, sends, group=ctx.group)
        return torch.stack(recvs).sum(0), None, None


def all_gather(x: torch.Tensor, group: dist.ProcessGroup, dim: int | None = None) -> torch.Tensor:
    """Every rank's ``x`` in rank order: ``(W, *x.shape)``, or concatenated along ``dim``;
    differentiable (the gradient of the summed per-rank losses reaches each rank's ``x``)."""
    return _AllGather.apply(x, group, dim)


def _all_to_all(
    x: torch.Tensor, group: dist.ProcessGroup, split: int, concat: int, what: str
) -> torch.Tensor:
    world = dist.get_world_size(group)
    sends = [c.contiguous() for c in x.chunk(world, dim=split)]
    recvs = [torch.empty_like(c) for c in sends]
    with guarded(what, group):
        dist.all_to_all(recvs, sends, group=group)
    return torch.cat(recvs, dim=concat)


class _AllToAll(torch.autograd.Function):
    """Forward: split ``x`` into ``W`` equal chunks along ``split``, send chunk ``j`` to rank ``j``
    and concatenate the chunks received from ranks ``0..W-1`` along ``concat``. The map is linear
    and its adjoint is the same all-to-all with the two axes swapped, which is the backward."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        group: dist.ProcessGroup,
        split: int,
        concat: int,
        what: str,
    ) -> torch.Tensor:
        ctx.group, ctx.split, ctx.concat, ctx.what = group, split, concat, what
        return _all_to_all(x, group, split, concat, what)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None]:
        back = _all_to_all(grad, ctx.group, ctx.concat, ctx.split, f"the backward of {ctx.what}")
        return back, None, None, None, None


def all_to_all(
    x: torch.Tensor, group: dist.ProcessGroup, *, split: int, concat: int, what: str = "all_to_all"
) -> torch.Tensor:
    """Differentiable all-to-all: ``x`` split into ``W`` chunks along ``split`` (its size must be a
    multiple of ``W``), chunk ``j`` to rank ``j``, the received chunks concatenated along
    ``concat`` in rank order. Uses ``torch.distributed.all_to_all``, which ``gloo`` implements on
    CPU tensors in every torch this package supports (>= 2.6) and ``nccl`` on GPUs."""
    return _AllToAll.apply(x, group, split, concat, what)


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
        with guarded("the gradient sum of a replicated tensor (all_reduce)", ctx.group):
            dist.all_reduce(grad, group=ctx.group)
        return grad, None


def replicated(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Mark ``x`` as held identically by every rank: its gradient becomes the sum of the per-rank
    gradients, i.e. the gradient of the summed loss, identical on every rank."""
    return _Replicated.apply(x, group)
