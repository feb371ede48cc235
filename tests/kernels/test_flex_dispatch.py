"""The FlexAttention inference dispatch of the 1-D sparse kernels (neighbourhood, sliding window, S2
groups): when it runs, that it says why in the debug log, and that its output is the kernels'
function (one small compiled Flex run per pattern)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnzoo.kernels import flex_dispatch
from attnzoo.kernels.attention import attention_reference
from attnzoo.kernels.neighborhood import na1d, na2d, neighborhood_attention_reference
from attnzoo.kernels.windowed import band_mask, group_mask, grouped_attention, sliding_window_attention

LOGGER = "attnzoo.kernels.flex_dispatch"


def test_wins_follows_the_thresholds() -> None:
    assert flex_dispatch.wins(1, 8192, 255)[0]
    assert not flex_dispatch.wins(1, 8192, 31)[0]
    assert not flex_dispatch.wins(1, 512, 1023)[0]
    ok, why = flex_dispatch.wins(2, 16384, 49)
    assert not ok and "2-D" in why


def _qkv(n: int, requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, n, 16, generator=g).requires_grad_(requires_grad) for _ in range(3)]


@pytest.fixture
def everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flex wins at every 1-D size (so that small shapes take it)."""
    monkeypatch.setattr(flex_dispatch, "MIN_TOKENS", 1)
    monkeypatch.setattr(flex_dispatch, "MIN_KEYS", 1)
    monkeypatch.delenv("ATTNZOO_FLEX", raising=False)


def test_training_calls_keep_the_tiled_kernel(everywhere: None, caplog: pytest.LogCaptureFixture) -> None:
    q, k, v = _qkv(64, requires_grad=True)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        out = na1d(q, k, v, 7)
    assert out.grad_fn is not None
    assert "attnzoo tiled kernel (gradients needed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER), torch.no_grad():
        na2d(q.view(1, 2, 8, 8, 16), k.view(1, 2, 8, 8, 16), v.view(1, 2, 8, 8, 16), 3)
    assert "na2d: attnzoo tiled kernel (2-D" in caplog.text


def test_env_switch_and_dtype_keep_the_tiled_kernel(
    everywhere: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    q, k, v = _qkv(64)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        na1d(q.double(), k.double(), v.double(), 7)
        monkeypatch.setenv("ATTNZOO_FLEX", "0")
        na1d(q, k, v, 7)
    assert "only fp32 CPU was measured" in caplog.text
    assert "(ATTNZOO_FLEX=0)" in caplog.text
    assert "compiled FlexAttention" not in caplog.text


def test_flop_counting_keeps_the_tiled_kernel(everywhere: None, caplog: pytest.LogCaptureFixture) -> None:
    q, k, v = _qkv(64)
    with caplog.at_level(logging.DEBUG, logger=LOGGER), FlopCounterMode(display=False) as counter:
        out = na1d(q, k, v, 7)
    assert "under a dispatch mode (e.g. FLOP counting)" in caplog.text
    assert counter.get_total_flops() > 0
    torch.testing.assert_close(out, na1d(q, k, v, 7))


def test_inference_runs_flex_and_computes_the_same_function(
    everywhere: None, caplog: pytest.LogCaptureFixture
) -> None:
    q, k, v = _qkv(160)  # longer than the window span (3 x 32): the blocked path, not the dense one
    with caplog.at_level(logging.DEBUG, logger=LOGGER), torch.no_grad():
        out_na = na1d(q, k, v, 9, dilation=2, is_causal=True)
        out_band = sliding_window_attention(q, k, v, left=5, right=3)
        out_s2 = grouped_attention(q, k, v, group_size=32, offset=8, num_sink=2, causal=True)
    assert caplog.text.count("compiled FlexAttention forward") == 3
    ref = neighborhood_attention_reference(q.double(), k.double(), v.double(), 9, 2, True)
    torch.testing.assert_close(out_na, ref.float(), atol=2e-5, rtol=1e-4)
    mask = band_mask(160, 160, 5, 3)
    ref = attention_reference(q.double(), k.double(), v.double(), mask=mask)
    torch.testing.assert_close(out_band, ref.float(), atol=2e-5, rtol=1e-4)
    mask = group_mask(160, 32, offset=8, num_sink=2, causal=True)
    ref = attention_reference(q.double(), k.double(), v.double(), mask=mask)
    torch.testing.assert_close(out_s2, ref.float(), atol=2e-5, rtol=1e-4)
