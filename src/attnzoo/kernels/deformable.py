"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, eq. 3): the CPU path
of the ``MultiScaleDeformableAttention`` CUDA extension that Deformable DETR, ViT-Adapter and DB-SAM
compile, in plain torch.

Values are ``L`` maps ``V_l: (H_l, W_l)`` per head, concatenated level after level (row-major within
a level) into ``value: (B, S, h, d)`` with ``S = sum_l H_l W_l``. Each query ``q`` and head ``m``
samples ``P`` points per level at normalised locations ``p = (x, y)`` in ``[0, 1]^2`` (``(0, 0)`` the
top-left corner of the map, ``(1, 1)`` its bottom-right corner) and sums them with weights ``A``::

    out[q, m] = sum_l sum_k A[q, m, l, k] * bilinear(V_l[m], p[q, m, l, k])

``bilinear`` reads the map as the CUDA kernel does: pixel ``(i, j)`` sits at ``((j + 0.5) / W_l,
(i + 0.5) / H_l)``, the four neighbours of a location are weighted bilinearly and neighbours outside
the map count as zero (``grid_sample(..., align_corners=False, padding_mode="zeros")``).

:func:`ms_deform_attn` runs one ``grid_sample`` per level; :func:`ms_deform_attn_reference` gathers
the four neighbours explicitly and is the test oracle. :func:`reference_points` gives the pixel
centres of a list of grids, the reference points queries on those grids start from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ms_deform_attn", "ms_deform_attn_reference", "reference_points"]


def _check_shapes(
    value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> None:
    b, s, h, _ = value.shape
    if sum(hh * ww for hh, ww in shapes) != s:
        raise ValueError(f"value has {s} positions, which the level shapes {list(shapes)} do not hold")
    if locations.dim() != 6 or locations.shape[-1] != 2 or locations.shape[3] != len(shapes):
        raise ValueError(
            f"locations must be (B, N_q, h, L={len(shapes)}, P, 2), got shape {tuple(locations.shape)}"
        )
    matching = tuple(weights.shape) == tuple(locations.shape[:-1])
    if not matching or locations.shape[0] != b or locations.shape[2] != h:
        raise ValueError(
            f"weights {tuple(weights.shape)} and locations {tuple(locations.shape)} do not match value "
            f"{tuple(value.shape)}"
        )


def ms_deform_attn(
    value: torch.Tensor,
    shapes: Sequence[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention read-out, one ``grid_sample`` per level.

    Args:
        value: ``(B, S, h, d)``, the ``L`` level maps concatenated along ``S``.
        shapes: ``[(H_l, W_l)]`` of the levels, in the order of ``value``.
        locations: ``(B, N_q, h, L, P, 2)`` normalised ``(x, y)`` sampling locations.
        weights: ``(B, N_q, h, L, P)`` attention weights (softmax-normalised by the caller).

    Returns:
        ``(B, N_q, h * d)``.
    """
    _check_shapes(value, shapes, locations, weights)
    b, _, h, d = value.shape
    _, n_q, _, n_levels, n_points, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    start = 0
    for level, (hh, ww) in enumerate(shapes):
        v = value[:, start : start + hh * ww].permute(0, 2, 3, 1).reshape(b * h, d, hh, ww)
        g = grids[:, :, :, level].transpose(1, 2).reshape(b * h, n_q, n_points, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
        start += hh * ww
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B h, d, N_q, L P)
    a = weights.transpose(1, 2).reshape(b * h, 1, n_q, n_levels * n_points)
    out = (stacked * a).sum(-1).view(b, h * d, n_q)
    return out.transpose(1, 2)


def ms_deform_attn_reference(
    value: torch.Tensor,
    shapes: Sequence[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """The read-out of :func:`ms_deform_attn` with the four bilinear neighbours gathered explicitly
    (no ``grid_sample``); same arguments and result."""
    _check_shapes(value, shapes, locations, weights)
    b, _, h, d = value.shape
    n_q = locations.shape[1]
    out = value.new_zeros(b, n_q, h, d)
    start = 0
    for level, (hh, ww) in enumerate(shapes):
        v = value[:, start : start + hh * ww].permute(0, 2, 1, 3)  # (B, h, H W, d)
        start += hh * ww
        x = locations[:, :, :, level, :, 0] * ww - 0.5  # (B, N_q, h, P), pixel coordinates
        y = locations[:, :, :, level, :, 1] * hh - 0.5
        a = weights[:, :, :, level]
        x0, y0 = torch.floor(x), torch.floor(y)
        for dy in (0, 1):
            for dx in (0, 1):
                cx, cy = x0 + dx, y0 + dy
                w = (1 - (x - cx).abs()) * (1 - (y - cy).abs())
                inside = (cx >= 0) & (cx <= ww - 1) & (cy >= 0) & (cy <= hh - 1)
                flat = (cy.clamp(0, hh - 1) * ww + cx.clamp(0, ww - 1)).long()  # (B, N_q, h, P)
                idx = flat.permute(0, 2, 1, 3).reshape(b, h, -1, 1).expand(-1, -1, -1, d)
                corner = torch.gather(v, 2, idx).view(b, h, n_q, -1, d).permute(0, 2, 1, 3, 4)
                scale = (w * a * inside.to(w.dtype)).unsqueeze(-1)  # (B, N_q, h, P, 1)
                out = out + (scale * corner).sum(dim=3)
    return out.reshape(b, n_q, h * d)


def reference_points(
    shapes: Sequence[tuple[int, int]], *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Pixel centres ``((j + 0.5) / W, (i + 0.5) / H)`` of each grid, grids concatenated in order:
    ``(sum_l H_l W_l, 2)`` in ``(x, y)`` order."""
    points = []
    for hh, ww in shapes:
        ys = (torch.arange(hh, device=device, dtype=dtype) + 0.5) / hh
        xs = (torch.arange(ww, device=device, dtype=dtype) + 0.5) / ww
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1))
    return torch.cat(points, dim=0)
