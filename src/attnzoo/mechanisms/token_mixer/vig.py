"""ViG's bidirectional gated linear attention mixer (Liao et al., "ViG: Linear-complexity Visual
Sequence Learning with Gated Linear Attention", AAAI 2025, sec. 3.2-3.3, eq. 6-9).

On a ``(H, W)`` token grid ``x (B, HW, C)``::

    z = SiLU(DWConv3x3(x))                                   (2-D locality, on the grid)
    q, k, v = z W_q, z W_k, z W_v;  G^f, G^b = logsigmoid(z W_1 W_2 + b) / 16   (direction-wise gates)
    o^f_t = q_t S^f_t,  S^f_t = diag(exp(G^f_t)) S^f_{t-1} + k_t^T v_t          (forward scan)
    o^b_t = q_t S^b_t,  S^b_t = diag(exp(G^b_t)) S^b_{t+1} + k_t^T v_t          (backward scan)
    o = (o^f + o^b) / 2 / sqrt(d_k)                         (both scans include token t)
    g = sigmoid(z W_g + b_g)
    y = (RMSNorm(o) * g + RMSNorm(z) * (1 - g)) W_o          (2-D gating locality injection)

The two scans run as :func:`attnzoo.kernels.linear.linear_attention_bidirectional` (which counts
token t once) plus the diagonal term ``(q_t . k_t) v_t``, so that token t is counted in both
directions as in ViG.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_bool, check_float, check_int
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.kernels.linear import linear_attention_bidirectional
from attnzoo.mechanisms.token_mixer.gla import check_gate_args, gla_log_gate, gla_widths
from attnzoo.registry import Card, register

__all__ = ["ViGAttention"]


@register(
    Card(
        name="vig",
        aliases=("vig_attention", "bidirectional_gla", "vig_gla"),
        family="token_mixer",
        summary="Bidirectional GLA on a 2-D grid: direction-wise gates and gated depthwise-conv locality.",
        paper="ViG: Linear-complexity Visual Sequence Learning with Gated Linear Attention",
        arxiv="2405.18425",
        year=2025,
        official_repo="hustvl/ViG",
        official_commit="dfb9d3212cac06b18cd4bf2a0eed56e107c4fb2a",
        parity="equations",
        parity_fixtures=("gla_reference",),
        time_complexity="O(N C^2 + N C (d_k + L) + N C 9) with d_k = key_dim / h, chunk L = 16; linear in N",
        memory_complexity="O(B N C) activations; recurrent state 2 directions x h (d_k/h) (C/h) = "
        "2 key_dim C / h numbers (Zoology-style state size)",
        layouts=("BNC",),
        spatial_dims=2,
        causal=False,
        ledger=(
            "Follows classification/models/vig.py::GatedLinearAttention (rope_mode='none', use_dirpe=False, "
            "use_out_act=False); verified in float64 against the same equations written as two token loops. "
            "The scan recurrence itself is the official naive_recurrent_gla (fixture gla_reference).",
            "Official training runs fla's fused_chunk GLA on [x; flip(x)] and eval runs the Triton "
            "bid_fused_recurrent_gla (GPU only); both compute (o_fwd + o_bwd) / 2 with the current token in "
            "both scans, reproduced here with the exact chunked kernel on any device.",
            "Only expand_v = 1 (value_dim = C), the setting of every ViG model: the locality injection "
            "mixes o with the C-channel conv features per head, which needs value_dim = C.",
            "Not supported: a class token in the sequence (ViG's token_position / middle cls token; ViG "
            "classifies by average pooling by default), rope_mode 1d/2dv0/2dv1, use_dirpe.",
            "ViG's reset_parameters (xavier_uniform, gain 2^-2.5) is not reproduced (PyTorch defaults).",
            "Parameter keys equal ViG's except the two RMSNorms (fla RMSNorm `weight` -> nn.RMSNorm "
            "`weight`, same key) and in_proj.0 (same): official checkpoints load without renaming.",
            "In a timm ViT (attnzoo.integrations.timm) the mixer sees the H x W patch tokens only: class "
            "and register tokens get a separate global softmax attention over all tokens (own qkv/proj, "
            "timm's layout), so patch tokens never read them (in timm's Attention they do).",
        ),
        tiny={"dim": 8, "num_heads": 2},
        sweep={"dim": (8, 16), "num_heads": (1, 2), "size": (2, 8)},
        bench={"dim": 512, "num_heads": 8},
    )
)
class ViGAttention(TokenMixer):
    """ViG mixer on ``x (B, H*W, C)`` with ``size=(H, W)`` -> ``(B, H*W, C)``.

    Heads: ``q, k, gates: (B, h, N, key_dim / h)``, ``v: (B, h, N, C / h)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim`` and ``key_dim``.
        expand_k: ``key_dim = int(C * expand_k)`` (ViG uses 0.5).
        gate_low_rank_dim: rank of the (two-direction) gate projection.
        gate_logit_normalizer: tau in ``log alpha = logsigmoid(.) / tau``.
        clamp_min: optional lower bound on the log gates.
        norm_eps: RMSNorm epsilon.
        conv_bias: bias of the depthwise 3x3 convolution (ViG's use_bias_in_dwconv).
        conv_act: SiLU after the convolution (ViG's use_act_in_conv).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        *,
        expand_k: float = 0.5,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        clamp_min: float | None = None,
        norm_eps: float = 1e-5,
        conv_bias: bool = False,
        conv_act: bool = True,
    ) -> None:
        super().__init__()
        self.key_dim, _ = gla_widths(dim, num_heads, expand_k, 1.0)
        check_gate_args(gate_logit_normalizer, clamp_min)
        check_int(gate_low_rank_dim, "gate_low_rank_dim")
        check_float(norm_eps, "norm_eps", positive=True)
        check_float(norm_eps, "norm_eps", positive=True)
        check_bool(conv_bias, "conv_bias")
        check_bool(conv_act, "conv_act")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.gate_logit_normalizer = float(gate_logit_normalizer)
        self.clamp_min = clamp_min
        conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=conv_bias)
        self.in_proj = nn.Sequential(conv, nn.SiLU() if conv_act else nn.Identity())
        self.qkv_proj = nn.Linear(dim, 2 * self.key_dim + dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(dim, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, 2 * self.key_dim)
        )
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.g_norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        self.l_norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        self.g_proj = nn.Linear(dim, dim)

    def state_size(self) -> int:
        """Recurrent state numbers per image (both scan directions): ``2 key_dim C / h``."""
        return 2 * self.key_dim * self.dim // self.num_heads

    def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        b, _, c = x.shape
        h = self.num_heads
        z = self.in_proj(x.transpose(1, 2).reshape(b, c, *size)).flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv_proj(z).split([self.key_dim, self.key_dim, c], dim=-1)
        q, k, v = (split_heads(t, h) for t in qkv)
        log_gates = gla_log_gate(self.gk_proj(z), self.gate_logit_normalizer, self.clamp_min)
        fwd_gate, bwd_gate = (split_heads(t, h) for t in log_gates.chunk(2, dim=-1))
        scale = q.shape[-1] ** -0.5
        o = linear_attention_bidirectional(q, k, v, log_gate=fwd_gate, reverse_log_gate=bwd_gate, scale=scale)
        o = (o + scale * (q * k).sum(-1, keepdim=True) * v) / 2  # token t is in both ViG scans
        g = torch.sigmoid(self.g_proj(z))
        mixed = merge_heads(self.g_norm(o)) * g + merge_heads(self.l_norm(split_heads(z, h))) * (1 - g)
        return self.o_proj(mixed)
