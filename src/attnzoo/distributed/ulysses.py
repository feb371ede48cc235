"""Ulysses sequence parallelism: exact softmax attention over a sequence split across ranks, by
trading the sequence split for a head split.

Jacobs et al., "DeepSpeed Ulysses: System Optimizations for Enabling Training of Extreme Long
Sequence Transformer Models" (arXiv:2309.14509, 2023). Rank ``r`` of ``W`` holds the contiguous
shard ``r`` of the queries, keys and values, ``(B, h, N/W, d)``. One all-to-all turns the shards
into head groups over the whole sequence: rank ``j`` receives heads ``[j h/W, (j + 1) h/W)`` of
every shard, ``(B, h/W, N, d)``; it runs :func:`attnzoo.kernels.attention` on them (any mask that
attention takes over the full sequence, here ``causal``), and a second all-to-all returns each
shard's rows of every head, ``(B, h, N/W, d_v)``. An all-to-all is a linear map whose adjoint is
the all-to-all with the two axes swapped, so the backward pass is two all-to-alls around the
kernel's own backward.

Every rank sends ``(W-1)/W`` of its q, k and v shards and of its output, so the bytes per rank
shrink as ``1/W`` for a fixed ``N``; compute is balanced for any mask, and a rank attends with
``h/W`` heads over the full sequence (the kernel's memory for those heads, e.g. SDPA's). The head
count must be a multiple of ``W`` (Ulysses splits whole heads) and the shards equal (a sequence
length that ``W`` divides): a head count or shard length that does not fit raises a clear error
naming ``q`` on every rank before any data moves, instead of silently mixing heads.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from attnzoo.checks import check_tensor
from attnzoo.distributed._comm import agree, all_to_all, group_info
from attnzoo.distributed._shards import layout_names, shard_layout
from attnzoo.kernels.attention import attention

__all__ = ["ulysses_attention"]


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Softmax attention over a sequence sharded across the ranks of ``group``, by all-to-all.

    Every rank of the group calls this with its own contiguous shard (rank ``r`` holds positions
    ``[r n, (r + 1) n)``, e.g. from :func:`attnzoo.distributed.shard_sequence`) and gets the rows
    of ``attnzoo.kernels.attention(Q, K, V, causal=causal, scale=scale)`` for its queries, in the
    dtype of ``q``. Gradients are those of the sum of the per-rank losses; every rank must run the
    backward pass (it communicates). Uses ``torch.distributed.all_to_all`` (``gloo`` implements it
    for CPU tensors in every supported torch, ``nccl`` on GPUs).

    Args:
        q, k: ``(B, h, n, d)`` local shards; v: ``(B, h, n, d_v)``. ``h`` must be a multiple of the
            group size ``W`` (each rank attends with ``h / W`` whole heads); ``B``, ``h``, ``n``,
            ``d``, ``d_v``, the dtype and ``causal`` must agree on every rank (equal shards: the full
            length ``N = n W``).
        causal: causal attention over the full sequence.
        scale: score scale; ``d ** -0.5`` when ``None``.
        group: the process group over which the sequence is split (default: the world).

    Returns ``(B, h, n, d_v)``: this rank's rows of the output.

    Raises ``ValueError`` naming ``q`` (and the head count and group size) on every rank when
    ``h`` is not a multiple of ``W``, and naming the shard length when shards differ; a
    :class:`~attnzoo.distributed.RankFailure` if another rank dies or hangs.

    Example (on each of ``W`` ranks after ``torch.distributed.init_process_group``)::

        from attnzoo.distributed import gather_sequence, shard_sequence, ulysses_attention
        q, k, v = (shard_sequence(t, dim=2) for t in (q_full, k_full, v_full))  # h % W == 0
        out = ulysses_attention(q, k, v, causal=True)   # (B, h, N / W, d_v)
    """
    check_tensor(q, "q", floating=False, nonempty=False, finite=False)  # its device carries the checks
    group, _, world = group_info(group)

    def check() -> list[int]:
        layout = shard_layout(q, k, v, causal, scale)
        heads = q.shape[1]
        if heads % world:
            raise ValueError(
                f"q has {heads} heads (dimension 1 of shape {tuple(q.shape)}), not a multiple of the "
                f"{world} ranks of the process group: Ulysses gives every rank h / W whole heads "
                "(ring_attention has no such constraint)"
            )
        return layout

    names = layout_names("shard length (dimension 2 of q)")
    agree(check, names, group=group, device=q.device)
    d = q.shape[-1]
    packed = torch.cat([q, k, v], dim=-1)  # one all-to-all for the three inputs
    heads = all_to_all(packed, group, split=1, concat=2, what="ulysses_attention's all-to-all to heads")
    qh, kh, vh = heads.split([d, d, v.shape[-1]], dim=-1)
    out = attention(qh, kh, vh, causal=causal, scale=scale)  # (B, h / W, N, d_v)
    return all_to_all(out, group, split=2, concat=1, what="ulysses_attention's all-to-all back to shards")
