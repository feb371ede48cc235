"""Layout conversions between token sequences and feature maps, in one place.

Layouts:
    BNC: ``(B, N, C)`` tokens, with ``N = H*W`` in row-major order for a 2-D grid;
    BCHW: ``(B, C, H, W)`` channels-first feature map;
    BHWC: ``(B, H, W, C)`` channels-last feature map.
"""

from __future__ import annotations

import torch

from attnzoo.checks import check_size, check_tensor

__all__ = ["bchw_to_bhwc", "bchw_to_bnc", "bhwc_to_bchw", "bhwc_to_bnc", "bnc_to_bchw", "bnc_to_bhwc"]


def bnc_to_bhwc(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, N, C)`` with ``N = H*W`` -> ``(B, H, W, C)``."""
    check_tensor(x, "x", ndim=3, floating=False, finite=False, nonempty=False)
    h, w = check_size(size, x.shape[1], spatial_dims=2)
    return x.reshape(x.shape[0], h, w, x.shape[2])


def bnc_to_bchw(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, N, C)`` with ``N = H*W`` -> ``(B, C, H, W)``."""
    return bnc_to_bhwc(x, size).permute(0, 3, 1, 2)


def bhwc_to_bnc(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B, H*W, C)``."""
    check_tensor(x, "x", ndim=4, floating=False, finite=False, nonempty=False)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


def bchw_to_bnc(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)``."""
    check_tensor(x, "x", ndim=4, floating=False, finite=False, nonempty=False)
    return x.flatten(2).transpose(1, 2)


def bchw_to_bhwc(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W, C)``."""
    check_tensor(x, "x", ndim=4, floating=False, finite=False, nonempty=False)
    return x.permute(0, 2, 3, 1)


def bhwc_to_bchw(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B, C, H, W)``."""
    check_tensor(x, "x", ndim=4, floating=False, finite=False, nonempty=False)
    return x.permute(0, 3, 1, 2)
