"""Mixture-of-Head attention (Jin et al., "MoH: Multi-Head Attention as Mixture-of-Head Attention",
arXiv 2410.11842), in the form of the official MoH-DiT ``MoHAttention``.

Each head ``i`` is an expert; per token ``t`` its output is weighted by a gate ``g_{t,i}`` before
the output projection::

    MoH(x_t) = sum_i g_{t,i} H_i(x)_t W_O^i,        H_i = softmax(Q_i K_i^T / sqrt(d)) V_i

Heads ``[0, h_s)`` are shared (always active), heads ``[h_s, h)`` are routed: each token keeps its
top-``k`` routed heads (``k = routed_head``). With router logits ``W_r x_t`` (routed), ``W_s x_t``
(shared) and ``W_m x_t`` (2-way shared/routed balance)::

    g_r = k * topk(softmax(W_r x_t)) / sum(topk(...)),   g_s = h_s * softmax(W_s x_t),
    [a_s, a_r] = 2 * softmax(W_m x_t),                   g = [a_s g_s, a_r g_r]

The load-balance loss ``L_b = E^2 * mean_i(P_i f_i)`` (``E`` routed heads, ``P_i`` the mean router
probability, ``f_i`` the fraction of tokens routing to head ``i``) is kept in ``aux_loss``.

``sparse_heads=True`` computes a routed head's attention only for the query rows of the tokens
that selected it (keys and values still span all tokens), so attention FLOPs fall with the
activated-head ratio; the result equals the dense form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_bool, check_divisible, check_int, check_rate
from attnzoo.families import TokenMixer
from attnzoo.kernels import attention, merge_heads
from attnzoo.kernels.attention import padding_mask, sequence_padding_mask
from attnzoo.registry import Card, register

__all__ = ["MoHAttention"]


@register(
    Card(
        name="moh_attention",
        aliases=("moh", "mixture_of_head_attention"),
        family="token_mixer",
        summary="Multi-head attention whose heads are experts: shared heads plus top-k routed heads per "
        "token, gated and summed; optional compute of the selected heads only.",
        paper="MoH: Multi-Head Attention as Mixture-of-Head Attention",
        arxiv="2410.11842",
        year=2024,
        official_repo="SkyworkAI/MoH",
        official_commit="2cefd57b78196dd0fabc34a858a7739235f55356",
        parity="official",
        parity_fixtures=("moh_attention",),
        time_complexity="O(N^2 d (h_s + k') + N C h d)  (k' = routed heads per token: k with "
        "sparse_heads, h - h_s dense)",
        memory_complexity="O(N C + N h) with SDPA",
        layouts=("BNC",),
        spatial_dims=1,
        causal=True,
        key_padding="any",
        ledger=(
            "sparse_heads=True (not in the paper's or the official code, which computes every head and "
            "zeroes the unselected ones): routed heads run attention only on the query rows of the tokens "
            "that selected them, padded per head to the largest selection count in the batch; equal to the "
            "dense form, attention FLOPs ~ (h_s + k * imbalance) / h of dense. The padding size is data "
            "dependent, so under torch.compile this path breaks the graph once per call.",
            "aux_loss (official: appended to the class-level list MoHAttention.LOAD_BALANCING_LOSSES in "
            "training only) is an attribute set on every forward with routed heads, in train and eval; "
            "the training loop adds it, official coefficient moh_loss_coeff.",
            "shared_head == 1 works (the single shared head has gate 1); the official code crashes there "
            "(wg_1 is only created for shared_head > 1).",
            "shared_head == 0 (routed heads only) follows the official gating (g = g_r); the paper's eq. 5 "
            "always has both groups.",
            "routed_head == 0 requires shared_head == num_heads (the all-shared layers of the released "
            "models); other combinations raise ValueError instead of failing deep in the official einsum.",
            "causal=True (MoH-LLaMA3 style) masks future keys; the fixtures cover the non-causal DiT form.",
            "Parameter names: router (official wg), shared_router (wg_1), mix_router (wg_0); the "
            "attnzoo.official.moh_attention adapter renames them.",
        ),
        tiny={"dim": 16, "num_heads": 4, "shared_head": 1, "routed_head": 2},
        sweep={
            "shared_head": (1, 2),
            "routed_head": (1, 2),
            "causal": (False, True),
            "qk_norm": (False, True),
            "sparse_heads": (False, True),
            "size": (1, 10),
        },
        bench={
            "dim": 768,
            "num_heads": 12,
            "shared_head": 4,
            "routed_head": 2,
            "qkv_bias": True,
            "sparse_heads": True,
            "variants": {"dense": {"sparse_heads": False}, "sparse": {"sparse_heads": True}},
            "equal_width": {"shared_head": 1, "routed_head": 2},
        },
    )
)
class MoHAttention(TokenMixer):
    """Mixture-of-Head attention on ``x (B, N, C)``; returns ``(B, N, C)``.

    After each forward, ``last_gates`` holds the per-token head gates ``(B, N, h)`` (detached) and,
    with routed heads, ``aux_loss`` the load-balance loss (a scalar with gradient to the router).

    Args:
        dim: channels C.
        num_heads: heads h (shared + routed candidates).
        shared_head: h_s always-active heads (the first h_s heads); default ``num_heads // 2``.
        routed_head: k, routed heads each token activates among the ``h - h_s`` others; default
            half of them (at least one). 0 only when all heads are shared.
        head_dim: d; ``dim // num_heads`` by default (then ``num_heads`` must divide ``dim``).
        qkv_bias: bias on the fused Q/K/V projection.
        qk_norm: LayerNorm(d) on queries and keys.
        causal: mask future tokens.
        sparse_heads: compute routed heads only for the tokens that selected them.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        shared_head: int | None = None,
        routed_head: int | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        causal: bool = False,
        sparse_heads: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_int(dim, "dim")
        check_int(num_heads, "num_heads")
        if head_dim is None:
            check_divisible(dim, num_heads, "dim", "num_heads")
            head_dim = dim // num_heads
        else:
            check_int(head_dim, "head_dim")
        for name, flag in (("qkv_bias", qkv_bias), ("qk_norm", qk_norm), ("causal", causal)):
            check_bool(flag, name)
        check_bool(sparse_heads, "sparse_heads")
        check_rate(attn_drop, "attn_drop")
        check_rate(proj_drop, "proj_drop")
        if shared_head is None:
            shared_head = num_heads // 2
        if check_int(shared_head, "shared_head", minimum=0) > num_heads:
            raise ValueError(f"shared_head must be an int in [0, num_heads={num_heads}], got {shared_head!r}")
        candidates = num_heads - shared_head
        if routed_head is None:
            routed_head = max(1, candidates // 2) if candidates else 0
        if check_int(routed_head, "routed_head", minimum=0) > candidates:
            raise ValueError(
                f"routed_head must be an int in [0, num_heads - shared_head = {candidates}], "
                f"got {routed_head!r}"
            )
        if routed_head == 0 and shared_head != num_heads:
            raise ValueError(
                f"routed_head=0 needs shared_head == num_heads (all heads shared), "
                f"got shared_head={shared_head} with num_heads={num_heads}"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.shared_head = shared_head
        self.routed_head = routed_head
        self.causal = causal
        self.sparse_heads = sparse_heads
        self.attn_drop = attn_drop
        self.scale = head_dim**-0.5
        inner = num_heads * head_dim

        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.q_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.router = nn.Linear(dim, candidates, bias=False) if routed_head else None
        self.shared_router = nn.Linear(dim, shared_head, bias=False) if shared_head > 1 else None
        self.mix_router = nn.Linear(dim, 2, bias=False) if routed_head and shared_head else None
        self.aux_loss: torch.Tensor | None = None
        self.last_gates: torch.Tensor | None = None

    def _gates(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head gates ``(B, N, h)`` and the routed-head selection mask ``(B, N, h - h_s)``; the
        load-balance loss averages over the tokens ``keep (B, N)`` marks real (all when ``None``)."""
        s = self.shared_head
        if self.shared_router is not None:
            shared = F.softmax(self.shared_router(x), dim=-1) * s
        else:
            shared = x.new_ones(*x.shape[:-1], s)
        if self.router is None:
            return shared, None
        probs = F.softmax(self.router(x), dim=-1)
        top = torch.topk(probs, self.routed_head, dim=-1).indices
        selected = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top, True)
        kept = probs * selected
        denom = kept.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(kept.dtype).eps)
        routed = kept / denom * self.routed_head
        experts = probs.shape[-1]
        chosen, probs_ = selected.to(probs.dtype).flatten(0, -2), probs.flatten(0, -2)
        if keep is None:
            load, mean_probs = chosen.mean(dim=0), probs_.mean(dim=0)
        else:  # means over the real tokens only
            weight = keep.to(probs.dtype).flatten()[:, None] / keep.sum()
            load, mean_probs = (chosen * weight).sum(dim=0), (probs_ * weight).sum(dim=0)
        self.aux_loss = (mean_probs * load).mean() * experts * experts
        if self.mix_router is None:
            return routed, selected
        mix = F.softmax(self.mix_router(x), dim=-1) * 2
        return torch.cat([mix[..., :1] * shared, mix[..., 1:] * routed], dim=-1), selected

    def _routed_sparse(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        gates: torch.Tensor,
        selected: torch.Tensor,
        drop: float,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gated routed-head outputs ``(B, E, N, d)``, attention run on the selected query rows only;
        ``keep (B, N)`` (True = real token) hides padded keys."""
        b, e, n, d = q.shape
        chosen = selected.transpose(1, 2)
        rows = int(chosen.sum(dim=-1).max())
        order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)[..., :rows]
        index = order.unsqueeze(-1).expand(b, e, rows, d)
        mask = None
        if self.causal:
            mask = torch.arange(n, device=q.device) <= order.unsqueeze(-1)
        if keep is not None:
            rows_keep = keep[:, None, :].expand(b, e, n).gather(2, order) if self.causal else None
            pad = padding_mask(keep, rows_keep)
            mask = pad if mask is None else mask & pad
        out = attention(q.gather(2, index), k, v, mask=mask, scale=self.scale, dropout_p=drop)
        out = out * gates.transpose(1, 2).gather(2, order).unsqueeze(-1)
        return out.new_zeros(b, e, n, d).scatter(2, index, out)

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, _ = x.shape
        keep = key_padding_mask
        gates, selected = self._gates(x, keep)
        self.last_gates = gates.detach()
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        drop = self.attn_drop if self.training else 0.0
        s = self.shared_head
        mask = sequence_padding_mask(keep, self.causal)
        if self.sparse_heads and selected is not None:
            routed = self._routed_sparse(q[:, s:], k[:, s:], v[:, s:], gates[..., s:], selected, drop, keep)
            heads = [routed]
            if s:
                shared = attention(
                    q[:, :s],
                    k[:, :s],
                    v[:, :s],
                    mask=mask,
                    causal=self.causal,
                    scale=self.scale,
                    dropout_p=drop,
                )
                heads.insert(0, shared * gates[..., :s].transpose(1, 2).unsqueeze(-1))
            out = torch.cat(heads, dim=1)
        else:
            out = attention(q, k, v, mask=mask, causal=self.causal, scale=self.scale, dropout_p=drop)
            out = out * gates.transpose(1, 2).unsqueeze(-1)
        return self.proj_drop(self.proj(merge_heads(out)))
