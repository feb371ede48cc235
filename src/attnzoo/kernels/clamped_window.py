"""Clamped-window (NATTEN-style) aggregation with precomputed window weights (dynamic kernels).

Every pixel ``(i, j)`` of an ``H x W`` grid reads the ``k x k`` window whose top-left corner is
``(s_i, s_j)`` with ``s_i = clamp(i - k // 2, 0, H - k)`` (same for columns): windows slide with the
pixel inside the grid and stop at the borders instead of padding, so every window holds ``k^2``
real pixels. For window weights ``a: (B, G, H, W, k^2)`` (taps in row-major ``(t, u)`` order) and
values ``v: (B, G, C, H, W)``::

    out[b, g, i, j, c] = sum_{t, u} a[b, g, i, j, t k + u] v[b, g, c, s_i + t, s_j + u]

:func:`neighborhood_bias` gathers a relative-position table ``rpb: (G, 2k-1, 2k-1)`` into the
per-tap bias ``rpb[g, s_i + t - i + k - 1, s_j + u - j + k - 1]`` of shape ``(G, H, W, k^2)``.
"""

from __future__ import annotations

import torch

__all__ = ["neighborhood_aggregate", "neighborhood_bias", "window_starts"]


def window_starts(n: int, kernel_size: int, device: torch.device | None = None) -> torch.Tensor:
    """``(n,)`` long: first row (or column) of each position's clamped window."""
    if kernel_size > n:
        raise ValueError(f"kernel_size={kernel_size} exceeds the grid extent {n}")
    return (torch.arange(n, device=device) - kernel_size // 2).clamp(0, n - kernel_size)


def neighborhood_bias(rpb: torch.Tensor, height: int, width: int, kernel_size: int) -> torch.Tensor:
    """Relative-position bias per window tap: ``(G, 2k-1, 2k-1) -> (G, H, W, k^2)``."""
    k = kernel_size
    if rpb.shape[-2:] != (2 * k - 1, 2 * k - 1):
        raise ValueError(
            f"rpb must end with ({2 * k - 1}, {2 * k - 1}) for kernel_size={k}, got {tuple(rpb.shape)}"
        )

    def offsets(n: int) -> torch.Tensor:  # (n, k): key row minus query row, shifted to [0, 2k-2]
        pos = torch.arange(n, device=rpb.device)[:, None]
        taps = torch.arange(k, device=rpb.device)
        return window_starts(n, k, rpb.device)[:, None] + taps - pos + k - 1

    rows, cols = offsets(height), offsets(width)
    out = rpb[:, rows[:, None, :, None], cols[None, :, None, :]]  # (G, H, W, k, k)
    return out.reshape(rpb.shape[0], height, width, k * k)


def neighborhood_aggregate(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Weighted sum over each pixel's clamped ``k x k`` window.

    Args:
        attn: ``(B, G, H, W, k^2)`` window weights.
        value: ``(B, G, C, H, W)``.
        kernel_size: k (``k <= H`` and ``k <= W``).

    Returns:
        ``(B, G, H, W, C)``. Memory stays ``O(B G C H W)``: the windows are never materialised.
    """
    k = kernel_size
    h, w = value.shape[-2:]
    if attn.shape[-1] != k * k or attn.shape[-3:-1] != (h, w):
        raise ValueError(
            f"attn {tuple(attn.shape)} does not fit value {tuple(value.shape)} with kernel_size={k}"
        )
    si = window_starts(h, k, value.device)
    sj = window_starts(w, k, value.device)
    out = value.new_zeros(value.shape)
    for t in range(k):
        rows = value.index_select(3, si + t)
        for u in range(k):
            out = out + attn[..., t * k + u].unsqueeze(2) * rows.index_select(4, sj + u)
    return out.permute(0, 1, 3, 4, 2)
