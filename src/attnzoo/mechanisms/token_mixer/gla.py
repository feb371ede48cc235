"""Gated Linear Attention (Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient
Training", ICML 2024, eq. 3-5 and sec. 4.4).

Linear attention whose ``d_k x d_v`` state decays through a data-dependent gate per key channel::

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = (q_t / sqrt(d_k)) S_t,
    alpha_t = sigmoid(x_t W_1 W_2 + b)^(1/tau)           (log alpha_t = logsigmoid(.) / tau, tau = 16)

run by :func:`attnzoo.kernels.linear.linear_attention` (chunked, log-space per-key decay). The
GLA layer then applies a per-head RMSNorm and a swish output gate:
``y = (RMSNorm(o) * swish(x W_r)) W_o``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_float, check_int, check_tensor
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.kernels.linear import linear_attention, linear_attention_step
from attnzoo.registry import Card, register

__all__ = [
    "GatedLinearAttention",
    "GatedLinearAttentionOp",
    "convert_fla_gla_state_dict",
    "gated_linear_attention",
    "gla_widths",
]

_FUSED_NORM = "g_norm_swish_gate.weight"


def gla_widths(dim: int, num_heads: int, expand_k: float, expand_v: float) -> tuple[int, int]:
    """``(key_dim, value_dim) = (int(dim * expand_k), int(dim * expand_v))``, both divisible by heads."""
    check_int(dim, "dim")
    check_int(num_heads, "num_heads")
    check_float(expand_k, "expand_k", positive=True)
    check_float(expand_v, "expand_v", positive=True)
    key_dim, value_dim = int(dim * expand_k), int(dim * expand_v)
    check_divisible(key_dim, num_heads, "key_dim (dim * expand_k)", "num_heads")
    check_divisible(value_dim, num_heads, "value_dim (dim * expand_v)", "num_heads")
    return key_dim, value_dim


def check_gate_args(gate_logit_normalizer: float, clamp_min: float | None) -> None:
    """Validate the GLA gate settings: ``gate_logit_normalizer > 0``, ``clamp_min <= 0`` or ``None``."""
    check_float(gate_logit_normalizer, "gate_logit_normalizer", positive=True)
    if clamp_min is not None and check_float(clamp_min, "clamp_min") > 0:
        raise ValueError(f"clamp_min must be a number <= 0 or None, got {clamp_min!r}")


def gla_log_gate(logits: torch.Tensor, gate_logit_normalizer: float, clamp_min: float | None) -> torch.Tensor:
    """GLA log gates ``logsigmoid(logits) / gate_logit_normalizer``, clamped below at ``clamp_min``."""
    log_gate = F.logsigmoid(logits) / gate_logit_normalizer
    if clamp_min is not None:
        log_gate = log_gate.clamp_min(clamp_min)
    return log_gate


def gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gate: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The GLA recurrence with per-key log gates (``<= 0``) and scale ``d_k ** -0.5`` by default.

    Args:
        q, k, log_gate: ``(B, h, N, d_k)``; v: ``(B, h, N, d_v)``.
        initial_state: ``(B, h, d_k, d_v)`` or ``None``.
        scale: query scale, ``d_k ** -0.5`` when ``None``.
        key_padding_mask: ``(B, N)`` bool, True = real token; padded tokens neither add to the state
            nor decay it.

    Returns ``(o (B, h, N, d_v), final_state (B, h, d_k, d_v))``.
    """
    check_tensor(q, "q", ndim=4, finite=False)
    check_tensor(log_gate, "log_gate", ndim=4, finite=False, shape=q.shape)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return linear_attention(
        q,
        k,
        v,
        log_gate=log_gate,
        initial_state=initial_state,
        scale=scale,
        key_padding_mask=key_padding_mask,
    )


def convert_fla_gla_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a ``fla.layers.gla.GatedLinearAttention`` state_dict to :class:`GatedLinearAttention`.

    The only renamed key is the fused norm's ``g_norm_swish_gate.weight`` -> ``g_norm.weight``
    (``fuse_norm=True``, fla's default); every other key, and the unfused ``g_norm.weight``, is kept.
    """
    if _FUSED_NORM in state_dict and "g_norm.weight" in state_dict:
        raise ValueError(f"state_dict has both {_FUSED_NORM!r} and 'g_norm.weight'")
    return {("g_norm.weight" if key == _FUSED_NORM else key): value for key, value in state_dict.items()}


class GatedLinearAttentionOp(nn.Module):
    """Parameter-free module form of :func:`gated_linear_attention` (the GLA recurrence)."""

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        log_gate: torch.Tensor,
        initial_state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return gated_linear_attention(q, k, v, log_gate, initial_state)


@register(
    Card(
        name="gla",
        aliases=("gated_linear_attention",),
        family="token_mixer",
        summary="Linear attention with data-dependent per-key forget gates, RMSNorm and swish output gate.",
        paper="Gated Linear Attention Transformers with Hardware-Efficient Training",
        arxiv="2312.06635",
        year=2024,
        official_repo="hustvl/ViG",
        official_commit="dfb9d3212cac06b18cd4bf2a0eed56e107c4fb2a",
        parity="official",
        parity_fixtures=("gla_reference",),
        time_complexity="O(N (d_k + d_v) (L + C) + N d_k d_v) per head summed over heads, chunk L = 16 "
        "(log L levels of per-key rescaling); linear in N",
        memory_complexity="O(B N (C + L h)) activations; recurrent state h (d_k/h) (d_v/h) = "
        "key_dim * value_dim / h numbers (Zoology-style state size)",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        causal_only=True,
        key_padding="any",
        ledger=(
            "Recurrence verified against the official naive_recurrent_gla (fixture gla_reference, from ViG's "
            "vendored flash-linear-attention: with/without initial state, weak and strong gates).",
            "naive_recurrent_gla runs in float32 whatever the input dtype and returns the final state in "
            "float32; attnzoo computes in float64 for float64 inputs (differences <= 3e-6 on the fixtures).",
            "naive_recurrent_gla ignores output_final_state (always returns the state) and, with "
            "causal=False, returns (o, reverse-scan o) with the same gates and no initial state in the "
            "reverse pass; the official adapter reproduces this, the mixer is causal only (raises on "
            "causal=False; the bidirectional ViG mixer is `vig`).",
            "The layer follows fla.layers.gla.GatedLinearAttention of the same snapshot: fla's fused chunk "
            "Triton kernels (GPU only) are replaced by the exact chunked form; no-bias q/k/v/g/o "
            "projections, low-rank gate x W_1 W_2 + b, logsigmoid / gate_logit_normalizer, clamp_min.",
            "fuse_norm: fla keeps the RMSNorm weight under `g_norm_swish_gate.weight` (fused) or "
            "`g_norm.weight`; attnzoo always uses `g_norm.weight` (same function: RMSNorm(o) * swish(g)); "
            "convert_fla_gla_state_dict renames it, all other keys are fla's.",
            "fla's reset_parameters (xavier_uniform with gain 2^-2.5) is not reproduced: attnzoo keeps "
            "PyTorch's default Linear initialisation.",
        ),
        tiny={"dim": 8, "num_heads": 2},
        sweep={
            "dim": (8, 16),
            "num_heads": (1, 2),
            "expand_k": (0.5, 1.0),
            "expand_v": (1.0, 2.0),
            "gate_low_rank_dim": (4, 16),
            "size": (1, 12),
        },
        bench={"dim": 512, "num_heads": 8, "expand_k": 1.0, "expand_v": 1.0, "causal": True},
        conformance={
            "skip": {
                "export_dynamic_size": "the chunked linear-attention kernel (attnzoo.kernels.linear) "
                "loops in Python over the N / chunk chunks, so a traced program is fixed to one "
                "sequence length"
            }
        },
    )
)
class GatedLinearAttention(TokenMixer):
    """GLA layer on ``x (B, N, C)`` -> ``(B, N, C)``.

    Heads: ``q, k, log_gate: (B, h, N, key_dim / h)``, ``v: (B, h, N, value_dim / h)``; the state
    is ``(B, h, key_dim / h, value_dim / h)``.

    Args:
        dim: channels C (``d_model``).
        num_heads: heads h; must divide ``key_dim`` and ``value_dim``.
        expand_k, expand_v: ``key_dim = int(C * expand_k)``, ``value_dim = int(C * expand_v)``.
        gate_low_rank_dim: rank of the gate projection.
        gate_logit_normalizer: tau in ``log alpha = logsigmoid(.) / tau``.
        clamp_min: optional lower bound on the log gate.
        norm_eps: RMSNorm epsilon.
        causal: must be True (GLA is causal; see ``vig`` for the bidirectional mixer).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        *,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        clamp_min: float | None = None,
        norm_eps: float = 1e-5,
        causal: bool = True,
    ) -> None:
        super().__init__()
        if not check_bool(causal, "causal"):
            raise ValueError("causal must be True: GLA is causal (the bidirectional mixer is 'vig')")
        check_int(gate_low_rank_dim, "gate_low_rank_dim")
        check_float(norm_eps, "norm_eps", positive=True)
        check_float(norm_eps, "norm_eps", positive=True)
        self.key_dim, self.value_dim = gla_widths(dim, num_heads, expand_k, expand_v)
        check_gate_args(gate_logit_normalizer, clamp_min)
        self.dim = dim
        self.num_heads = num_heads
        self.causal = True
        self.gate_logit_normalizer = float(gate_logit_normalizer)
        self.clamp_min = clamp_min
        self.q_proj = nn.Linear(dim, self.key_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.key_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.value_dim, bias=False)
        self.g_proj = nn.Linear(dim, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(dim, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, self.key_dim)
        )
        self.o_proj = nn.Linear(self.value_dim, dim, bias=False)
        self.g_norm = nn.RMSNorm(self.value_dim // num_heads, eps=norm_eps)

    def state_size(self) -> int:
        """Recurrent state numbers per sequence: ``h (key_dim / h) (value_dim / h)``."""
        return self.key_dim * self.value_dim // self.num_heads

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.num_heads
        log_gate = gla_log_gate(self.gk_proj(x), self.gate_logit_normalizer, self.clamp_min)
        return tuple(split_heads(t, h) for t in (self.q_proj(x), self.k_proj(x), self.v_proj(x), log_gate))

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """``o (B, h, N, d_v)`` -> ``(B, N, C)``: per-head RMSNorm, swish gate, projection."""
        return self.o_proj(merge_heads(self.g_norm(o)) * F.silu(self.g_proj(x)))

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v, log_gate = self._project(x)
        o, _ = gated_linear_attention(q, k, v, log_gate, key_padding_mask=key_padding_mask)
        return self._output(x, o)

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one token: ``x_t (B, C)``, ``state (B, h, d_k, d_v)`` or ``None`` -> ``(y_t, state)``."""
        check_tensor(x_t, "x_t", ndim=2, shape=(None, self.dim))
        q, k, v, log_gate = (t.squeeze(2) for t in self._project(x_t[:, None, :]))
        o, state = linear_attention_step(q, k, v, state, log_gate, scale=q.shape[-1] ** -0.5)
        return self._output(x_t[:, None, :], o[:, :, None, :])[:, 0], state
