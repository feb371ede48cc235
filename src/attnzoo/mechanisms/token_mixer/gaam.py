"""Multi-head Gaussian adaptive attention (Ioannides et al., "Gaussian Adaptive Attention is All You
Need: Robust Contextual Representations Across Multiple Modalities", 2024, GAAM, Sec. 3 / Alg. 1).

No queries or keys: each head standardises its slice of ``x`` along the normalised axis with the
slice's own mean and (unbiased) variance, scores every entry with a product of ``G`` Gaussians
with learned mean offsets ``delta_i`` and scales ``c_i``, normalises the scores along the axis and
reweights ``x``::

    mu = mean(x), s2 = var(x) + eps                       (over the head's slice of the axis)
    y_i = (x - (mu + delta_i)) / sqrt(s2)
    g = prod_i exp(-y_i^2 / (2 c_i^2)) / sqrt(2 pi c_i^2)
    w = g / max(sum(g), eps),      out = x * w             (sum over the slice of the axis)

``axis="tokens"`` normalises over the N tokens per channel (the official README's ``norm_axis=1``
on ``(B, N, C)``: a token mixer); ``axis="channels"`` over the C channels per token. Heads split
the normalised axis into ``num_heads`` consecutive chunks of ``n // num_heads`` entries, the last
chunk taking the remainder, as the official ``MultiHeadGaussianAdaptiveAttention`` does.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from attnzoo.capture import capturing, record
from attnzoo.checks import check_bool, check_float, check_int, check_tensor
from attnzoo.families import TokenMixer
from attnzoo.registry import Card, register

__all__ = ["GaussianAdaptiveAttention", "gaam_head_slices"]

OFFICIAL_HEAD_EPS = 1e-8


def gaam_head_slices(n: int, num_heads: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each head's chunk of an axis of length ``n`` (last takes the remainder)."""
    chunk = n // num_heads
    if chunk == 0:
        raise ValueError(f"the normalised axis has {n} entries, fewer than num_heads={num_heads}")
    return [(h * chunk, chunk if h < num_heads - 1 else n - h * chunk) for h in range(num_heads)]


@register(
    Card(
        name="gaam",
        aliases=("gaussian_adaptive_attention", "multi_head_gaussian_adaptive_attention"),
        family="token_mixer",
        summary="Reweights x by a normalised product of learned Gaussians of its standardised values "
        "along the token (or channel) axis; 2 parameters per Gaussian per head, no projections.",
        paper="Gaussian Adaptive Attention is All You Need: Robust Contextual Representations Across "
        "Multiple Modalities",
        arxiv="2401.11143",
        year=2024,
        official_repo="gioannides/Gaussian-Adaptive-Attention",
        official_commit="145d1bc87b8c96d77e72dedecd6e8845e50cb5cd",
        parity="official",
        parity_fixtures=("gaam",),
        time_complexity="O(N C G)",
        memory_complexity="O(N C)",
        layouts=("BNC",),
        spatial_dims=1,
        key_padding_note="axis='tokens' standardises every channel over all N tokens, split into head "
        "chunks of N // num_heads tokens, so the statistics and the chunks depend on the padded length",
        ledger=(
            "eps: the official MultiHeadGaussianAdaptiveAttention passes its eps into the positional "
            "slot mean_offset_init of every head, so heads always run with eps=1e-8 whatever eps it is "
            "given; attnzoo uses eps as given (the paper's equation) and reproduces the quirk with "
            "official_head_eps=True (the official adapter sets it for the multi-head class only; the "
            "single-head GaussianAdaptiveAttention honours eps).",
            "Parameters: official per-head mean_offsets (G,) and c (G,) (one module per head) are stacked "
            "into mean_offsets (h, G) and c (h, G); attnzoo.official.gaam.convert_gaam converts checkpoints.",
            "Axis: the official norm_axis is any axis of any tensor; attnzoo takes (B, N, C) and "
            "axis='tokens' (official norm_axis=1) or 'channels' (norm_axis=-1); the adapter maps any "
            "other rank/axis by moving norm_axis to the token axis.",
            "Variance is the UNBIASED one (torch.var default), as officially. A head chunk with fewer "
            "than 2 entries raises ValueError (officially NaN).",
            "The mixture is a PRODUCT of the G Gaussian densities (as officially), computed "
            "with raw densities (no log-space softmax); the normaliser is clamped at eps exactly as "
            "officially, so where all densities underflow the weights are raw/eps and do not sum to 1.",
            "padding_value (official semantics): entries equal to it are zeroed for the mean/variance "
            "but still counted, are scored from their raw value and pass through unchanged.",
            "mean_offset_init: unused officially (offsets start at zero); attnzoo starts them at "
            "mean_offset_init. c starts at exp(N(0, 1)) as officially.",
            "bf16/fp16 inputs are scored in float32 and the output cast back.",
        ),
        tiny={"dim": 8, "num_gaussians": 3},
        sweep={"num_gaussians": (1, 3), "num_heads": (1, 2), "axis": ("tokens", "channels"), "size": (4, 10)},
        bench={"dim": 256, "num_heads": 4, "num_gaussians": 5},
    )
)
class GaussianAdaptiveAttention(TokenMixer):
    """GAAM on ``x (B, N, C)``; returns ``(B, N, C)``.

    Args:
        dim: channels C.
        num_gaussians: G Gaussians per head.
        num_heads: h chunks of the normalised axis (the last takes the remainder); need not divide it.
        axis: ``"tokens"`` (normalise over N per channel) or ``"channels"`` (over C per token).
        padding_value: entries equal to it are treated as padding (official semantics), or ``None``.
        eps: added to the variance and lower bound of the normaliser.
        mean_offset_init: initial value of the mean offsets.
        official_head_eps: reproduce the official multi-head quirk (heads use eps=1e-8).
    """

    def __init__(
        self,
        dim: int,
        num_gaussians: int = 4,
        *,
        num_heads: int = 1,
        axis: Literal["tokens", "channels"] = "tokens",
        padding_value: float | None = None,
        eps: float = 1e-8,
        mean_offset_init: float = 0.0,
        official_head_eps: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_gaussians", num_gaussians), ("num_heads", num_heads)):
            check_int(value, name)
        check_bool(official_head_eps, "official_head_eps")
        if axis not in ("tokens", "channels"):
            raise ValueError(f"axis must be 'tokens' or 'channels', got {axis!r}")
        if axis == "channels" and 2 * num_heads > dim:
            raise ValueError(
                f"axis='channels' needs at least 2 channels per head: num_heads={num_heads}, dim={dim}"
            )
        check_float(eps, "eps", positive=True)
        check_float(mean_offset_init, "mean_offset_init")
        if padding_value is not None:
            check_float(padding_value, "padding_value")
        self.dim = dim
        self.num_gaussians = num_gaussians
        self.num_heads = num_heads
        self.axis = axis
        self.padding_value = None if padding_value is None else float(padding_value)
        self.eps = float(eps)
        self.official_head_eps = official_head_eps
        self.mean_offsets = nn.Parameter(torch.full((num_heads, num_gaussians), float(mean_offset_init)))
        self.c = nn.Parameter(torch.exp(torch.randn(num_heads, num_gaussians)))

    @property
    def head_eps(self) -> float:
        """The eps every head runs with."""
        return OFFICIAL_HEAD_EPS if self.official_head_eps else self.eps

    def _head_index(self, n: int, device: torch.device) -> torch.Tensor:
        slices = gaam_head_slices(n, self.num_heads)
        if min(length for _, length in slices) < 2:
            raise ValueError(
                f"every head needs at least 2 entries along the normalised axis for the unbiased "
                f"variance: axis={self.axis!r} has {n} entries for num_heads={self.num_heads}"
            )
        chunk = slices[0][1]
        return torch.clamp(torch.arange(n, device=device) // chunk, max=self.num_heads - 1)

    def _weights(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian mixture weights of ``x (P, n, L)`` normalised over axis 1, same shape."""
        n = x.shape[1]
        head = self._head_index(n, x.device)
        onehot = nn.functional.one_hot(head, self.num_heads).to(x.dtype)  # (n, h)
        count = onehot.sum(0)  # (h,)
        xm = x if self.padding_value is None else torch.where(x != self.padding_value, x, torch.zeros_like(x))
        mean_h = torch.einsum("pnl,nh->phl", xm, onehot) / count[:, None]
        mean = torch.einsum("phl,nh->pnl", mean_h, onehot)
        sq_h = torch.einsum("pnl,nh->phl", (xm - mean) ** 2, onehot) / (count[:, None] - 1)
        var = torch.einsum("phl,nh->pnl", sq_h, onehot) + self.head_eps
        offsets = self.mean_offsets.to(x.dtype)[head]  # (n, G)
        c2 = self.c.to(x.dtype)[head] ** 2  # (n, G)
        y = (x.unsqueeze(-1) - mean.unsqueeze(-1) - offsets[None, :, None, :]) / var.sqrt().unsqueeze(-1)
        c2 = c2[None, :, None, :]
        dens = torch.exp(-(y**2) / (2.0 * c2)) / torch.sqrt(2.0 * math.pi * c2)
        mixture = dens.prod(dim=-1)
        total = torch.einsum("pnl,nh->phl", mixture, onehot)
        total = torch.einsum("phl,nh->pnl", total.clamp(min=self.head_eps), onehot)
        return mixture / total

    def _to_axis_first(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.axis == "tokens" else x.transpose(1, 2)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights (the normalised mixture) of ``x (B, N, C)``, shape ``(B, N, C)``.

        Unlike the output, padded entries are not masked here (as the official
        ``return_attention_details``)."""
        check_tensor(x, "x", ndim=3)
        if x.shape[2] != self.dim:
            raise ValueError(f"x has {x.shape[2]} channels but the module was built with dim={self.dim}")
        work = torch.promote_types(x.dtype, torch.float32)
        return self._to_axis_first(self._weights(self._to_axis_first(x.to(work)))).to(x.dtype)

    def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        work = torch.promote_types(x.dtype, torch.float32)
        xa = self._to_axis_first(x.to(work))
        w = self._weights(xa)
        if capturing():
            # (B, L, 1, n): one query per (batch, other-axis entry), weights over the normalised axis.
            record(w.transpose(1, 2).unsqueeze(2), kind="gaussian")
        out = xa * w
        if self.padding_value is not None:
            out = torch.where(xa != self.padding_value, out, xa)
        return self._to_axis_first(out).to(x.dtype)
