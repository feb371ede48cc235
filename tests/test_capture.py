"""capture(): records attention matrices by module name without changing outputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import attnzoo


def test_capture_records_named_weights_and_keeps_outputs() -> None:
    model = nn.Sequential(
        attnzoo.create("mhsa", dim=8, num_heads=2), attnzoo.create("mhsa", dim=8, num_heads=2)
    )
    model.eval()
    x = torch.randn(2, 5, 8)
    plain = model(x)
    with attnzoo.capture(model, scores=True) as cap:
        captured = model(x)
    torch.testing.assert_close(captured, plain, atol=1e-6, rtol=1e-5)
    assert cap.names() == ["0", "1"]
    rec = cap["1"][0]
    assert rec.probs.shape == (2, 2, 5, 5) and rec.scores is not None
    torch.testing.assert_close(rec.probs.sum(-1), torch.ones(2, 2, 5))
    assert not rec.probs.requires_grad


def test_nothing_recorded_outside_capture() -> None:
    m = attnzoo.create("mhsa", dim=8, num_heads=2)
    with pytest.warns(UserWarning, match="recorded no attention"), attnzoo.capture(m) as cap:
        pass
    m(torch.randn(1, 3, 8))
    assert cap.records == []


def test_unknown_name_lists_recorded() -> None:
    m = attnzoo.create("mhsa", dim=8, num_heads=2)
    with attnzoo.capture(m) as cap:
        m(torch.randn(1, 3, 8))
    try:
        cap["nope"]
    except KeyError as e:
        assert "recorded" in str(e)
    else:
        raise AssertionError("expected KeyError")


def test_capture_of_a_model_with_nothing_to_capture_warns() -> None:
    se = attnzoo.create("se", channels=8, reduction=2)
    with pytest.warns(UserWarning, match="recorded no attention in SqueezeExcitation"):
        with attnzoo.capture(se):
            se(torch.randn(1, 8, 4, 4))
    mhsa = attnzoo.create("mhsa", dim=8, num_heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with attnzoo.capture(mhsa) as cap:
            mhsa(torch.randn(1, 5, 8))
    assert cap.records
