"""Hard-attention / feature-selection gates with gradient routing (Roffo et al., "Feature Selection
Gates with Gradient Routing for Endoscopic Image Computing", MICCAI 2024, arXiv 2407.04400, Sec. 2).

A gate is an input-independent, learned per-channel weight::

    out[:, c] = x[:, c] * sigmoid(w_c)          w: (C,) free logits

placed after every CNN stage (``(B, C, H, W)``, this module) or, in a ViT, in place of LayerScale on
both residual branches (:class:`HardGatedViTBlock`). Gradient routing (:class:`GradientRouting`)
trains the gates with their own optimizer and loss in a first forward pass, then the rest of the
network with the main loss in a second forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.checks import check_divisible, check_int
from attnzoo.families import FeatureMapAttention
from attnzoo.kernels.attention import attention, merge_heads, split_heads
from attnzoo.registry import Card, register

__all__ = [
    "GradientRouting",
    "HardAttentionGate",
    "HardGatedViTBlock",
    "bench_cost_model",
    "frozen_gates",
    "gate_parameters",
]

_INITS = ("xavier", "he", "zeros")


@register(
    Card(
        name="hard_attention_gate",
        aliases=("feature_selection_gate", "fsg", "hag"),
        family="feature_map",
        summary="Learned input-independent per-channel sigmoid gates, trained by gradient routing.",
        paper="Feature Selection Gates with Gradient Routing for Endoscopic Image Computing",
        arxiv="2407.04400",
        year=2024,
        official_repo="cosmoimd/feature-selection-gates",
        official_commit="8d0be638f32f53b73bb1811d8d1cad645ed0cf9a",
        parity="official",
        parity_fixtures=("hard_attention_gate",),
        time_complexity="O(C H W)",
        memory_complexity="O(C H W)",
        layouts=("BCHW",),
        spatial_dims=2,
        ledger=(
            "The official code has no gate module: gates are raw nn.Parameters (fsag_*) multiplied in "
            "FSGNetR18.forward and in the ViT Block. attnzoo's gate owns `logits` (C,); the fixtures verify "
            "it through HardGatedViTBlock, whose converter maps fsag_rgb_ls1/2 -> gate1/gate2.logits.",
            "Family feature_map: the gate weighs a map by itself (no gating signal). In the ViT block the "
            "same gate weighs channels-last tokens via gate.weights().",
            "Official init: xavier_normal_ on a (1, C) tensor with gain 1 (std sqrt(2 / (1 + C))), or "
            "kaiming_normal_ ('he') in FSGNetR18; init='xavier' | 'he' | 'zeros' reproduce them.",
            "Gradient routing: the official trainer zero-grads once, backpropagates the routing loss through "
            "everything, steps only the gate optimizer, then runs a second forward and lets the main loss "
            "accumulate onto the same grads. GradientRouting does the same, except that the second pass runs "
            "with gates frozen (detached), so gate .grad holds the routing gradient only (the official gate "
            "grads also pick up main-loss gradient that no optimizer ever uses). Updates are identical "
            "without clip_grad; with it, the main-step norm no longer counts that unused gate gradient.",
            "The official loop runs under CUDA autocast + GradScaler; GradientRouting is precision-agnostic "
            "(wrap the forward in autocast yourself) and clips/NaN-cleans grads like the official code.",
            "The official Block accepts init_values and drop_path and ignores them (LayerScale and DropPath "
            "are commented out); HardGatedViTBlock has neither and the converter ignores those kwargs.",
        ),
        tiny={"channels": 8},
        sweep={"channels": (4, 8), "size": (1, 8)},
        bench={
            "channels": 256,
            "cost_model": "attnzoo.mechanisms.feature_map.hard_attention_gate:bench_cost_model",
        },
    )
)
class HardAttentionGate(FeatureMapAttention):
    """Per-channel gate on ``x (B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        channels: C.
        init: ``"xavier"`` (official ViT/default), ``"he"`` (FSGNetR18 option) or ``"zeros"`` (all 0.5).
    """

    def __init__(self, channels: int, *, init: str = "xavier") -> None:
        super().__init__()
        check_int(channels, "channels")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.channels = channels
        self.frozen = False
        self.logits = nn.Parameter(torch.empty(channels))
        with torch.no_grad():
            if init == "xavier":
                self.logits.normal_(0.0, math.sqrt(2.0 / (1 + channels)))
            elif init == "he":
                self.logits.normal_(0.0, math.sqrt(2.0 / channels))
            else:
                self.logits.zero_()

    def weights(self) -> torch.Tensor:
        """``sigmoid(logits)``, ``(C,)``; detached while the gate is frozen (see :func:`frozen_gates`)."""
        logits = self.logits.detach() if self.frozen else self.logits
        return torch.sigmoid(logits)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights().view(1, -1, 1, 1)


def bench_cost_model(config: dict, n: int, batch: int) -> dict[str, float]:
    """The gate's forward FLOPs, which the FLOP counter cannot see (no matmul): the sigmoid of the
    ``C`` logits (counted as 4 operations each: negate, exp, add, divide) and the product
    ``x * gate`` over ``B C N`` elements, for ``N = H W`` positions."""
    c = int(config["channels"])
    return {"model FLOPs": float(4 * c + batch * c * n)}


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``logits`` of every :class:`HardAttentionGate` inside ``model``."""
    return [m.logits for m in model.modules() if isinstance(m, HardAttentionGate)]


@contextmanager
def frozen_gates(model: nn.Module) -> Iterator[None]:
    """Inside the block, every gate of ``model`` is applied with detached logits (no gradient)."""
    gates = [m for m in model.modules() if isinstance(m, HardAttentionGate)]
    previous = [g.frozen for g in gates]
    for g in gates:
        g.frozen = True
    try:
        yield
    finally:
        for g, was in zip(gates, previous, strict=True):
            g.frozen = was


class GradientRouting:
    """The paper's dual-forward training step.

    Args:
        model: a network containing :class:`HardAttentionGate` modules.
        main_optimizer: optimizer over every parameter except the gates.
        gate_optimizer: optimizer over the gates only (the official code uses Adam, lr 1e-6).
        clip_grad: max grad norm (over all parameters) before the main step, or ``None``.
        clip_gate_grad: max grad norm (over all parameters) before the gate step, or ``None``.

    :meth:`step` zero-grads both optimizers once; pass 0 backpropagates the routing loss and steps
    the gate optimizer; pass 1 runs a fresh forward with gates frozen, backpropagates the main loss
    (accumulating onto pass 0's backbone grads, as officially) and steps the main optimizer.
    """

    def __init__(
        self,
        model: nn.Module,
        main_optimizer: torch.optim.Optimizer,
        gate_optimizer: torch.optim.Optimizer,
        *,
        clip_grad: float | None = None,
        clip_gate_grad: float | None = None,
    ) -> None:
        gates = {id(p) for p in gate_parameters(model)}
        if not gates:
            raise ValueError("model contains no HardAttentionGate: nothing to route")
        main = [p for group in main_optimizer.param_groups for p in group["params"]]
        routed = [p for group in gate_optimizer.param_groups for p in group["params"]]
        if any(id(p) in gates for p in main):
            raise ValueError("main_optimizer must not hold gate parameters (use gate_parameters(model))")
        if any(id(p) not in gates for p in routed):
            raise ValueError("gate_optimizer must hold gate parameters only")
        self.model = model
        self.main_optimizer = main_optimizer
        self.gate_optimizer = gate_optimizer
        self.clip_grad = clip_grad
        self.clip_gate_grad = clip_gate_grad

    def _clean(self, max_norm: float | None) -> None:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        for p in params:
            p.grad = torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0)

    def step(
        self,
        forward: Callable[[], torch.Tensor],
        main_loss: Callable[[torch.Tensor], torch.Tensor],
        routing_loss: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step; ``forward()`` runs the model on the batch. Returns the detached
        ``(main loss, routing loss)``."""
        self.main_optimizer.zero_grad()
        self.gate_optimizer.zero_grad()
        gr = routing_loss(forward())
        gr.backward()
        self._clean(self.clip_gate_grad)
        self.gate_optimizer.step()
        with frozen_gates(self.model):
            loss = main_loss(forward())
            loss.backward()
        self._clean(self.clip_grad)
        self.main_optimizer.step()
        return loss.detach(), gr.detach()


class _Attention(nn.Module):
    """timm-style multi-head self-attention (qkv, optional per-head q/k LayerNorm, proj)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, qk_norm: bool, attn_drop: float, proj_drop: float
    ) -> None:
        super().__init__()
        check_divisible(dim, num_heads, "dim", "num_heads")
        head_dim = dim // num_heads
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(merge_heads(out)))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class HardGatedViTBlock(nn.Module):
    """Pre-norm ViT block with a hard-attention gate on each residual branch (the official FSG
    ``Block``): ``x + attn(norm1(x)) * sigmoid(w1)``, then ``x + mlp(norm2(x)) * sigmoid(w2)``.

    ``x (B, N, D) -> (B, N, D)``.

    Args:
        dim: D.
        num_heads: heads; must divide ``dim``.
        mlp_ratio: MLP hidden width ``int(D * mlp_ratio)``.
        qkv_bias: bias on the fused q/k/v projection.
        qk_norm: LayerNorm over each head's queries and keys.
        attn_drop, proj_drop: dropout on attention probabilities / after projections and MLP layers.
        gate_init: initialisation of both gates (see :class:`HardAttentionGate`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        gate_init: str = "xavier",
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        if hidden <= 0:
            raise ValueError(f"mlp_ratio={mlp_ratio} gives an empty MLP for dim={dim}")
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop)
        self.gate1 = HardAttentionGate(dim, init=gate_init)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, hidden, proj_drop)
        self.gate2 = HardAttentionGate(dim, init=gate_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, N, {self.dim}), got {tuple(x.shape)}")
        x = x + self.attn(self.norm1(x)) * self.gate1.weights()
        return x + self.mlp(self.norm2(x)) * self.gate2.weights()
