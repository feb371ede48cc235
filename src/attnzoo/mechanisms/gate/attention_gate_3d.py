"""Additive attention gate of Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look
for the Pancreas", MIDL 2018, arXiv 1804.03999, eq. 1-2), 3-D (the paper's volumetric setting, and
the gate of AGUNet, Bouget et al. 2021).

``alpha = resize(sigmoid(psi^T relu(Theta_s * x + resize(Phi * g)) + b_psi))``, ``out = W(alpha * x)``
with trilinear resizing; see :mod:`attnzoo.mechanisms.gate.attention_gate` for the terms.
"""

from __future__ import annotations

from attnzoo.mechanisms.gate.attention_gate import AdditiveAttentionGate, attention_gate_ledger
from attnzoo.registry import Card, register

__all__ = ["AttentionGate3d"]


@register(
    Card(
        name="attention_gate_3d",
        aliases=("ag_3d", "agunet_gate_3d"),
        family="gate",
        summary="Additive spatial gate on 3-D skip features from a coarser gating signal (Attention U-Net).",
        paper="Attention U-Net: Learning Where to Look for the Pancreas",
        arxiv="1804.03999",
        year=2018,
        official_repo="ozan-oktay/Attention-Gated-Networks",
        parity="equations",
        time_complexity="O(N C C_int / s^3 + N_g C_g C_int + N C^2),  N = D H W",
        memory_complexity="O(N C)",
        layouts=("BCDHW",),
        spatial_dims=3,
        ledger=attention_gate_ledger(3),
        tiny={"channels": 8, "gate_channels": 16},
        sweep={
            "channels": (4, 8),
            "gate_channels": (4, 16),
            "output_transform": (True, False),
            "size": (2, 6),
        },
        bench={"channels": 32, "gate_channels": 64},
        conformance={"sizes": [(4, 4, 6), (3, 4, 5)]},
    )
)
class AttentionGate3d(AdditiveAttentionGate):
    """Attention gate on ``x (B, C, D, H, W)`` with ``g (B, C_g, D_g, H_g, W_g)`` -> ``(B, C, D, H, W)``."""

    dims = 3
