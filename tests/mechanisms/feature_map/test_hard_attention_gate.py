"""Hard-attention gates: the gate, the FSG ViT block (official fixtures + a materialised reference),
and gradient routing (gates learn from the routed pass only)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo import official
from attnzoo.mechanisms.feature_map.hard_attention_gate import (
    GradientRouting,
    HardAttentionGate,
    HardGatedViTBlock,
    frozen_gates,
    gate_parameters,
)
from attnzoo.parity import fixture_cases, fixture_names, run_case


def test_gate_equation_and_init() -> None:
    gate = HardAttentionGate(6).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(gate(x), x * torch.sigmoid(gate.logits)[None, :, None, None])
    big = HardAttentionGate(20000)
    assert abs(float(big.logits.detach().std()) - (2 / 20001) ** 0.5) < 1e-3
    assert float(HardAttentionGate(4, init="zeros").weights().detach().sum()) == 2.0


def _block_reference(m: HardGatedViTBlock, x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    h = m.attn.num_heads
    y = m.norm1(x)
    qkv = m.attn.qkv(y).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    q, k, v = m.attn.q_norm(qkv[0]), m.attn.k_norm(qkv[1]), qkv[2]
    probs = torch.softmax((q * (d // h) ** -0.5) @ k.transpose(-2, -1), dim=-1)
    y = m.attn.proj((probs @ v).transpose(1, 2).reshape(b, n, d))
    x = x + y * torch.sigmoid(m.gate1.logits)
    y = m.mlp.fc2(F.gelu(m.mlp.fc1(m.norm2(x))))
    return x + y * torch.sigmoid(m.gate2.logits)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_block_matches_reference(qk_norm: bool) -> None:
    torch.manual_seed(0)
    m = HardGatedViTBlock(12, 3, mlp_ratio=2.0, qkv_bias=True, qk_norm=qk_norm).double().eval()
    for p in m.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    torch.testing.assert_close(m(x), _block_reference(m, x), atol=1e-12, rtol=1e-10)


def test_official_fixtures() -> None:
    if "hard_attention_gate" not in fixture_names():
        pytest.skip("parity fixtures hard_attention_gate not available")
    for case in fixture_cases("hard_attention_gate"):
        (out,) = run_case(case)
        torch.testing.assert_close(out, case.outputs[0], atol=case.atol, rtol=case.rtol)


def test_converter() -> None:
    torch.manual_seed(1)
    ours = HardGatedViTBlock(8, 2, qk_norm=True).double()
    sd = ours.state_dict()
    official_sd = {
        ("fsag_rgb_ls1" if k == "gate1.logits" else "fsag_rgb_ls2" if k == "gate2.logits" else k): v
        for k, v in sd.items()
    }
    ctor = {"dim": 8, "num_heads": 2, "qk_norm": True, "init_values": 1e-5, "drop_path": 0.1}
    run = official.load("hard_attention_gate", ctor, official_sd)
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(run(x=x)[0], ours.eval()(x))
    with pytest.raises(ValueError, match="act_layer"):
        official.load("hard_attention_gate", {**ctor, "act_layer": "relu"}, official_sd)
    with pytest.raises(ValueError, match="missing key 'fsag_rgb_ls1'"):
        official.load("hard_attention_gate", ctor, sd)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.gate = HardAttentionGate(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(torch.relu(self.conv(x))).mean(dim=(2, 3)))


def _grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names, params = zip(*model.named_parameters(), strict=True)
    return dict(zip(names, torch.autograd.grad(loss, params), strict=True))


def test_gradient_routing_gates_learn_from_routed_pass_only() -> None:
    torch.manual_seed(2)
    model = _Net().double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    target = torch.randn(4, 2, dtype=torch.float64)

    def main_loss(out: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, target)

    def routing_loss(out: torch.Tensor) -> torch.Tensor:
        return (out - target).abs().mean() * 3.0

    lr_main, lr_gate = 0.1, 0.5
    before = copy.deepcopy(model)
    g_routed = _grads(before, routing_loss(before(x)))
    after_gate = copy.deepcopy(before)
    with torch.no_grad():
        after_gate.gate.logits -= lr_gate * g_routed["gate.logits"]
    g_main = _grads(after_gate, main_loss(after_gate(x)))
    assert float(g_main["gate.logits"].abs().max()) > 0  # the main loss would move the gates

    gates = gate_parameters(model)
    others = [p for p in model.parameters() if all(p is not g for g in gates)]
    routing = GradientRouting(model, torch.optim.SGD(others, lr=lr_main), torch.optim.SGD(gates, lr=lr_gate))
    routing.step(lambda: model(x), main_loss, routing_loss)

    torch.testing.assert_close(model.gate.logits.grad, g_routed["gate.logits"])
    torch.testing.assert_close(model.gate.logits, after_gate.gate.logits)
    for name, p in model.named_parameters():
        if name != "gate.logits":  # backbone: routed + main gradients accumulate, as officially
            torch.testing.assert_close(p.grad, g_routed[name] + g_main[name])
            torch.testing.assert_close(p, dict(before.named_parameters())[name] - lr_main * p.grad)


def test_frozen_gates_and_validation() -> None:
    model = _Net()
    with frozen_gates(model):
        model(torch.randn(1, 3, 4, 4)).sum().backward()
    assert model.gate.logits.grad is None and not model.gate.frozen
    gates = gate_parameters(model)
    with pytest.raises(ValueError, match="main_optimizer"):
        GradientRouting(model, torch.optim.SGD(model.parameters(), lr=1), torch.optim.SGD(gates, lr=1))
    with pytest.raises(ValueError, match="gate_optimizer"):
        GradientRouting(model, torch.optim.SGD([model.head.weight], lr=1), torch.optim.SGD(
            [*gates, model.conv.weight], lr=1))
    with pytest.raises(ValueError, match="no HardAttentionGate"):
        GradientRouting(nn.Linear(2, 2), torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1),
                        torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1))
