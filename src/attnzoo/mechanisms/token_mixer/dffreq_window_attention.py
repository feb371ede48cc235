"""Window attention of DFFreq (Yan et al., "Dual Frequency Branch Framework with Reconstructed Sliding
Windows Attention for AI-Generated Image Detection", arXiv 2501.15253), exactly as the official
``LocalAttention`` computes it.

With ``Q, K, V = DWConv3x3(Conv1x1(x))`` cut into non-overlapping ``w x w`` windows (bottom/right
reflect padding to a multiple of ``w``), per window and head, ``Q, K, V`` are ``(c, w^2)``
matrices (``c = C / h`` channels, ``w^2`` pixels) and attention runs over CHANNELS::

    O = softmax(tau_h * Q K^T) V  *  GELU(V M^T + m)          (c x c map; M: w^2 x w^2 pixel MLP)

followed by cropping the padding and a 1x1 output projection. ``tau_h`` is a learned per-head
temperature (no 1/sqrt(d) scale, no q/k normalisation). Cost is linear in the number of pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int
from attnzoo.families import TokenMixer
from attnzoo.kernels import attention
from attnzoo.layout import bchw_to_bnc, bnc_to_bchw
from attnzoo.registry import Card, register

__all__ = ["DFFreqWindowAttention"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@register(
    Card(
        name="dffreq_window_attention",
        aliases=("dffreq_local_attention", "rswa"),
        family="token_mixer",
        summary="Channel (transposed) softmax attention inside non-overlapping windows, gated by a "
        "GELU pixel-MLP of V over the window (the DFFreq 'reconstructed sliding window' attention).",
        paper="Dual Frequency Branch Framework with Reconstructed Sliding Windows Attention for "
        "AI-Generated Image Detection",
        arxiv="2501.15253",
        year=2025,
        official_repo="HorizonTEL/DFFreq-main",
        official_commit="c79153ceb78e74135a99c6015df5059f20ff878f",
        parity="official",
        parity_fixtures=("dffreq_window_attention",),
        time_complexity="O(H W C (C / h + w^2 + C))  (w = window_size)",
        memory_complexity="O(H W C + (H W / w^2) h (C / h)^2)",
        layouts=("BNC",),
        spatial_dims=2,
        variable_size=True,
        ledger=(
            "Implements the official LocalAttention, not the paper's wording: the paper speaks of sliding-"
            "window attention modelling the relations between neighbouring elements of a local window; the "
            "official code uses non-overlapping windows (stride = window, no shift) and attends over "
            "CHANNELS (a (C/h) x (C/h) map per window and head, Restormer-style), with a learned per-head "
            "temperature as the only scale (no 1/sqrt(d), no L2 normalisation of q and k, temperature may "
            "be negative); pixels within a window interact only through the GELU(Linear(w^2)) gate on V "
            "and the 3x3 depthwise conv on q/k/v.",
            "The 'reconstructed' window (the Haar-DWT sub-band rearrangement in FreqLCBlock) and the "
            "FFT-phase branch are the surrounding block, not this mechanism; they are not included.",
            "Padding to a multiple of window_size is reflect padding at the bottom/right, as officially; "
            "padded pixels take part in the attention and the MLP and are cropped. Reflect padding needs "
            "pad < size: smaller grids raise ValueError (the official F.pad raises a RuntimeError).",
            "Token-mixer layout: x (B, H*W, C) with size=(H, W); the official module takes (B, C, H, W) "
            "(the adapter converts). Parameter names: pixel_mlp (official mlp.0), temperature stored as "
            "(h,) (official (h, 1, 1)).",
            "In a timm ViT (attnzoo.integrations.timm) the mixer sees the H x W patch tokens only: class "
            "and register tokens get a separate global softmax attention over all tokens (own qkv/proj, "
            "timm's layout), so patch tokens never read them (in timm's Attention they do).",
        ),
        tiny={"dim": 8, "num_heads": 2, "window_size": 4, "bias": True},
        sweep={
            "dim": (8, 16),
            "num_heads": (1, 2),
            "window_size": (2, 4),
            "bias": (True, False),
            "size": (4, 9),
        },
        bench={"dim": 3, "num_heads": 1, "window_size": 8, "bias": False},
    )
)
class DFFreqWindowAttention(TokenMixer):
    """DFFreq local (window, channel) attention on ``x (B, H*W, C)`` with ``size=(H, W)``;
    returns ``(B, H*W, C)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        window_size: window side w.
        bias: bias on the 1x1 qkv conv and the depthwise conv (the output projection always has one).
        padding_mode: padding of the 3x3 depthwise conv: ``"zeros"``, ``"reflect"``, ``"replicate"``
            or ``"circular"``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        *,
        window_size: int = 8,
        bias: bool = False,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_int(window_size, "window_size")
        check_bool(bias, "bias")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        pixels = window_size * window_size
        self.qkv = nn.Conv2d(dim, 3 * dim, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(
            3 * dim, 3 * dim, kernel_size=3, padding=1, groups=3 * dim, bias=bias, padding_mode=padding_mode
        )
        self.temperature = nn.Parameter(torch.full((num_heads,), 1.0 / math.sqrt(dim)))
        self.pixel_mlp = nn.Linear(pixels, pixels)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1)

    def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        hh, ww = size
        ws = self.window_size
        pad_h, pad_w = -hh % ws, -ww % ws
        if pad_h >= hh or pad_w >= ww:
            raise ValueError(
                f"size={tuple(size)} is too small for window_size={ws}: reflect padding to a multiple of the "
                f"window needs pad < size on each side (pads {pad_h}, {pad_w})"
            )
        qkv = self.qkv_dwconv(self.qkv(bnc_to_bchw(x, (hh, ww))))
        if pad_h or pad_w:
            qkv = F.pad(qkv, (0, pad_w, 0, pad_h), mode="reflect")
        b = qkv.shape[0]
        h1, w1 = (hh + pad_h) // ws, (ww + pad_w) // ws
        heads, c = self.num_heads, self.dim // self.num_heads
        windows = (
            qkv.reshape(b, 3, heads, c, h1, ws, w1, ws)
            .permute(1, 0, 4, 6, 2, 3, 5, 7)
            .reshape(3, b * h1 * w1, heads, c, ws * ws)
        )
        q, k, v = windows.unbind(0)
        out = attention(q * self.temperature[:, None, None], k, v, scale=1.0)
        out = out * F.gelu(self.pixel_mlp(v))
        out = (
            out.reshape(b, h1, w1, heads, c, ws, ws)
            .permute(0, 3, 4, 1, 5, 2, 6)
            .reshape(b, self.dim, h1 * ws, w1 * ws)[:, :, :hh, :ww]
        )
        return bchw_to_bnc(self.project_out(out))
