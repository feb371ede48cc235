"""Reversed attention (Ding et al., "Visual Dependency Transformers: Dependency Tree Emerges from
Reversed Attention", CVPR 2023, Sec. 3.2-3.3 and Fig. 2).

Each token is a child that sends its message to parent tokens following a distribution that sums to
one over the parents (i.e. over the output / query axis), instead of gathering from keys. Per head
``h`` with ``Q, K, V = X W_{Q,K,V}``::

    A^F_h = softmax_rows(Q_h K_h^T / sqrt(d))                 forward attention, (N_child, N_parent)
    P     = softmax(X W_P / tau)            (N, h)           head selector, tau = 0.1
    m     = m_prev * sigmoid(MLP(X))        (N,)             message controller (cumulative over layers)
    A^R_h[i, j] = A^F_h[j, i] * P[j, h] * m[j]               reversed attention, sum_i A^F_h[j, i] = 1
    Y_i   = W_O concat_h sum_j A^R_h[i, j] V_h[j]
    A^M   = sum_h A^R_h                                      soft dependency mask (parent i <- child j)

The dependency tree takes ``parent(j) = argmax_i A^M[i, j]`` (:func:`dependency_parents`). The leaf
pruning of DependencyViT-Lite keeps the tokens that receive the most messages, ``s_i = sum_j A^M[i, j]``
(leaves receive none), and drops the rest (:func:`prune_leaves`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.capture import capturing, module_scope, record
from attnzoo.checks import check_bool, check_divisible, check_float, check_rate, check_tensor
from attnzoo.families import TokenMixer
from attnzoo.kernels import merge_heads, split_heads
from attnzoo.registry import Card, register

__all__ = ["ReversedAttention", "ReversedOutput", "dependency_parents", "prune_leaves"]


class ReversedOutput(NamedTuple):
    """Result of :meth:`ReversedAttention.forward_tree`.

    Attributes:
        out: ``(B, N, C)`` mixed tokens.
        message: ``(B, N)`` cumulative message controller ``m`` to pass to the next layer.
        dependency: ``(B, N, N)`` soft dependency mask ``A^M[i, j]`` (parent ``i``, child ``j``).
    """

    out: torch.Tensor
    message: torch.Tensor
    dependency: torch.Tensor


def dependency_parents(dependency: torch.Tensor) -> torch.Tensor:
    """Parent of every child in the induced dependency tree: ``argmax_i A^M[i, j]``, shape ``(B, N)``.

    A node whose parent is itself is a root.
    """
    check_tensor(dependency, "dependency", ndim=3)
    if dependency.shape[1] != dependency.shape[2]:
        raise ValueError(f"dependency must be (B, N, N), got {tuple(dependency.shape)}")
    return dependency.argmax(dim=1)


def prune_leaves(
    x: torch.Tensor, message: torch.Tensor, dependency: torch.Tensor, keep_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DependencyViT-Lite dynamic pooling: keep the ``max(1, int(keep_ratio * N))`` tokens that
    receive the most messages (``sum_j A^M[i, j]``), in their original order.

    Args:
        x: ``(B, N, C)`` tokens.
        message: ``(B, N)`` cumulative message controller.
        dependency: ``(B, N, N)`` soft dependency mask from :meth:`ReversedAttention.forward_tree`.
        keep_ratio: fraction of tokens kept, in ``(0, 1]``.

    Returns:
        ``(x_kept (B, N', C), message_kept (B, N'), index (B, N'))`` with ``index`` into the input.
    """
    check_tensor(x, "x", ndim=3)
    b, n, _ = x.shape
    check_tensor(message, "message", shape=(b, n))
    check_tensor(dependency, "dependency", shape=(b, n, n))
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    keep = max(1, int(keep_ratio * n))
    received = dependency.sum(dim=2)
    index = received.topk(keep, dim=1).indices.sort(dim=1).values
    x_kept = x.gather(1, index.unsqueeze(-1).expand(b, keep, x.shape[2]))
    return x_kept, message.gather(1, index), index


@register(
    Card(
        name="reversed_attention",
        aliases=("dependency_vit", "dependencyvit"),
        family="token_mixer",
        summary="Children send messages to parents: attention normalised over queries, head-selected, gated.",
        paper="Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention",
        arxiv="2304.03282",
        year=2023,
        official_repo=None,
        parity="equations",
        time_complexity="O(N^2 C + N C^2)",
        memory_complexity="O(h N^2)",
        layouts=("BNC",),
        spatial_dims=1,
        causal=False,
        key_padding="any",
        ledger=(
            "No official code: the repository the paper announces (dingmyu/DependencyViT, commit "
            "3dcf359) holds only a LICENSE; verified against a float64 loop reference of the "
            "equations in tests/mechanisms/token_mixer/test_reversed_attention.py.",
            "The paper does not give the head selector's and message controller's exact layers: attnzoo "
            "uses Linear(C, h) for the selector (tau = 0.1, appendix D.1) and Linear(C, C/2)-GELU-"
            "Linear(C/2, 1)-sigmoid for the controller, all with biases.",
            "Leaf pruning ranks tokens by messages received, sum_j A^M[i, j] (a leaf receives none), and "
            "keeps max(1, int(keep_ratio N)) in their original order; the paper's wording ('leaf nodes "
            "which rarely send messages') leaves the exact score open.",
            "forward() starts every call from message m_prev = 1; chain layers with forward_tree() to "
            "carry the cumulative message controller and get the dependency mask A^M.",
            "Captured probabilities (kind='reversed') are (A^F)^T before head selector and message "
            "controller: columns (over the query axis) sum to one.",
        ),
        tiny={"dim": 8, "num_heads": 2},
        sweep={
            "dim": (8, 16),
            "num_heads": (1, 2),
            "head_selector": (True, False),
            "message_controller": (True, False),
            "size": (1, 10),
        },
        bench={"dim": 384, "num_heads": 6},
    )
)
class ReversedAttention(TokenMixer):
    """Reversed attention on ``x (B, N, C)`` -> ``(B, N, C)``.

    Args:
        dim: channels C.
        num_heads: heads h; must divide ``dim``.
        qkv_bias: bias on the fused Q/K/V projection.
        head_selector: learn the per-token head distribution ``P``; ``False`` sets ``P = 1``.
        message_controller: learn the per-token gate ``m``; ``False`` sets ``m = m_prev``.
        selector_temperature: softmax temperature ``tau`` of the head selector.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qkv_bias: bool = True,
        head_selector: bool = True,
        message_controller: bool = True,
        selector_temperature: float = 0.1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        check_float(selector_temperature, "selector_temperature", positive=True)
        check_rate(attn_drop, "attn_drop")
        check_rate(proj_drop, "proj_drop")
        check_bool(qkv_bias, "qkv_bias")
        check_bool(head_selector, "head_selector")
        check_bool(message_controller, "message_controller")
        self.dim = dim
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.selector_temperature = float(selector_temperature)
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.head_selector = nn.Linear(dim, num_heads) if head_selector else None
        hidden = max(1, dim // 2)
        self.message_controller = (
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
            if message_controller
            else None
        )
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _reversed(
        self,
        x: torch.Tensor,
        message: torch.Tensor | None,
        need_dependency: bool,
        keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``keep (B, N)`` (True = real token): padded tokens are no parent and send no message."""
        b, n, _ = x.shape
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)
        scores = (q * self.scale) @ k.transpose(-1, -2)  # (B, h, child j, parent i)
        if keep is not None:
            scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        reverse = scores.softmax(dim=-1).transpose(-1, -2)  # (B, h, parent i, child j), sums to 1 over i
        if capturing():
            record(reverse, scores.transpose(-1, -2), kind="reversed")
        gate = x.new_ones(b, self.num_heads, n)
        if self.head_selector is not None:
            gate = (self.head_selector(x) / self.selector_temperature).softmax(dim=-1).transpose(1, 2)
        m = x.new_ones(b, n) if message is None else message.to(x.dtype)
        if self.message_controller is not None:
            m = m * torch.sigmoid(self.message_controller(x)).squeeze(-1)
        gate = gate * m[:, None, :]  # (B, h, child j)
        if keep is not None:
            gate = gate * keep[:, None, :]
        drop = self.attn_drop if self.training else 0.0
        weights = F.dropout(reverse, drop) if drop else reverse
        out = weights @ (gate.unsqueeze(-1) * v)
        out = self.proj_drop(self.proj(merge_heads(out)))
        dependency = (reverse * gate.unsqueeze(-2)).sum(dim=1) if need_dependency else None
        return out, m, dependency

    def compute(
        self, x: torch.Tensor, size: tuple[int, ...], key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._reversed(x, None, need_dependency=False, keep=key_padding_mask)[0]

    def forward_tree(self, x: torch.Tensor, message: torch.Tensor | None = None) -> ReversedOutput:
        """One DependencyViT layer: mixed tokens, the updated cumulative message and ``A^M``.

        Args:
            x: ``(B, N, C)`` tokens.
            message: ``(B, N)`` cumulative message controller of the previous layers (``None`` = 1).
        """
        check_tensor(x, "x", ndim=3)
        if x.shape[2] != self.dim:
            raise ValueError(f"x has {x.shape[2]} channels but the module was built with dim={self.dim}")
        if message is not None:
            check_tensor(message, "message", shape=(x.shape[0], x.shape[1]))
        with module_scope(self):
            return ReversedOutput(*self._reversed(x, message, need_dependency=True))
