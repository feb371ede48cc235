"""NiNformer gating unit: float64 equation oracle, gate structure, block, fixed length."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import randomise

from attnzoo.mechanisms.token_mixer.ninformer_gating import NiNformerBlock, NiNformerGating


def _lin(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def _oracle(m: NiNformerGating, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    t = F.layer_norm(x, (c,), m.token_norm.weight, m.token_norm.bias).transpose(1, 2)
    y = x + _lin(F.gelu(_lin(t, m.token_mlp[0])), m.token_mlp[3]).transpose(1, 2)
    ch = F.layer_norm(y, (c,), m.channel_norm.weight, m.channel_norm.bias)
    gate = y + _lin(F.gelu(_lin(ch, m.channel_mlp[0])), m.channel_mlp[3])
    return _lin(x, m.proj) * gate


def test_matches_equation_oracle() -> None:
    m = NiNformerGating(8, 6, 10, 12).double()
    randomise(m)
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), _oracle(m, x))


def test_gate_mixes_tokens_and_projection_is_per_token() -> None:
    m = NiNformerGating(4, 5).double()
    randomise(m)
    x = torch.randn(1, 5, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 4] += torch.randn(4, dtype=torch.float64)
    # Changing one token changes every token's gate (token MLP) ...
    assert not torch.allclose(m.gate(x)[:, :4], m.gate(x2)[:, :4])
    # ... and the output is exactly projection * gate, with no squashing of the gate.
    torch.testing.assert_close(m(x), (x @ m.proj.weight.T + m.proj.bias) * m.gate(x))


def test_block_is_two_prenorm_residuals_with_shared_norm() -> None:
    blk = NiNformerBlock(6, 10, 5).double()
    randomise(blk)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    y = x + blk.gating(blk.norm(x))
    torch.testing.assert_close(blk(x), y + blk.ffn(blk.norm(y)))
    assert blk.gating.token_mlp[0].out_features == 10 and blk.gating.channel_mlp[0].out_features == 10


def test_token_mlp_parameters_scale_with_seq_len_only() -> None:
    a, b = NiNformerGating(8, 6, 10, 12), NiNformerGating(8, 12, 10, 12)
    count = lambda m: sum(p.numel() for p in m.token_mlp.parameters())  # noqa: E731
    assert count(b) - count(a) == 2 * 6 * 10 + 6  # fc1 weight columns, fc2 weight rows and bias


def test_errors() -> None:
    m = NiNformerGating(8, 6)
    with pytest.raises(ValueError, match="seq_len"):
        m(torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match="token_dim"):
        NiNformerGating(8, 6, 0)
    with pytest.raises(ValueError, match="x"):
        NiNformerBlock(8, 16, 6)(torch.randn(6, 8))
