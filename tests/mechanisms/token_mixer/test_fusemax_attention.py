"""fusemax_attention: with mhsa's weights it computes mhsa's function for every cascade (float64,
causal or not, tiles that do and do not divide N); options are checked by name; the card names the
cost model that attnzoo bench prints."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.bench.measure import bench_kwargs, cost_model
from attnzoo.kernels.fusemax import PASSES, bench_cost_model

C = 12


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tile", [1, 4, 5, 32])
def test_equals_mhsa_with_the_same_weights(passes: int, causal: bool, tile: int) -> None:
    torch.manual_seed(0)
    fused = attnzoo.create("fusemax", dim=C, num_heads=3, tile=tile, passes=passes, causal=causal).double()
    mhsa = attnzoo.create("mhsa", dim=C, num_heads=3, causal=causal).double()
    mhsa.load_state_dict(fused.state_dict())
    x = torch.randn(2, 9, C, dtype=torch.float64)
    torch.testing.assert_close(fused(x), mhsa(x), rtol=1e-12, atol=1e-12)


def test_captured_attention_is_the_softmax() -> None:
    torch.manual_seed(1)
    fused = attnzoo.create("fusemax", dim=C, num_heads=2, tile=3, causal=True).double()
    mhsa = attnzoo.create("mhsa", dim=C, num_heads=2, causal=True).double()
    mhsa.load_state_dict(fused.state_dict())
    x = torch.randn(1, 7, C, dtype=torch.float64)
    with attnzoo.capture() as got, torch.no_grad():
        fused(x)
    with attnzoo.capture() as want, torch.no_grad():
        mhsa(x)
    torch.testing.assert_close(got.records[0].probs, want.records[0].probs)


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"passes": 0}, ValueError, "passes"),
        ({"passes": 4}, ValueError, "passes"),
        ({"passes": True}, TypeError, "passes"),
        ({"tile": 0}, ValueError, "tile"),
        ({"tile": 2.5}, TypeError, "tile"),
        ({"causal": "yes"}, TypeError, "causal"),
        ({"qkv_bias": 1}, TypeError, "qkv_bias"),
        ({"num_heads": 5}, ValueError, "num_heads"),
    ],
)
def test_bad_options_are_named(kwargs: dict, error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle):
        attnzoo.create("fusemax_attention", **{"dim": C, "num_heads": 2, **kwargs})


def test_card_names_its_cost_model() -> None:
    card = attnzoo.card("fusemax_attention")
    assert card.paper == "FuseMax: Leveraging Extended Einsums to Optimize Attention Accelerator Design"
    assert cost_model("fusemax_attention") is bench_cost_model
    assert "cost_model" not in bench_kwargs("fusemax_attention")
    assert {v["passes"] for v in card.bench["variants"].values()} == set(PASSES)
    assert any("2406.10491 abstract" in line for line in card.ledger)
    assert cost_model("mhsa") is None
