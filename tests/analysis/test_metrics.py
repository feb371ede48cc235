"""Analysis metrics on hand-made attention matrices with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from attnzoo.analysis import metrics as M


def _uniform(b: int, h: int, n: int) -> torch.Tensor:
    return torch.full((b, h, n, n), 1.0 / n, dtype=torch.float64)


def _to_first(b: int, h: int, n: int) -> torch.Tensor:
    p = torch.zeros(b, h, n, n, dtype=torch.float64)
    p[..., 0] = 1.0
    return p


def _causal_uniform(n: int) -> torch.Tensor:
    tril = torch.tril(torch.ones(n, n, dtype=torch.float64))
    return (tril / tril.sum(-1, keepdim=True))[None, None]


def test_entropy_uniform_is_log_n_and_one_hot_is_zero() -> None:
    torch.testing.assert_close(
        M.attention_entropy(_uniform(2, 3, 7)), torch.full((2, 3), math.log(7), dtype=torch.float64)
    )
    torch.testing.assert_close(
        M.attention_entropy(_to_first(2, 3, 7)), torch.zeros(2, 3, dtype=torch.float64)
    )


def test_entropy_with_padding_uses_real_tokens_only() -> None:
    n = 6
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    p = torch.zeros(2, 1, n, n, dtype=torch.float64)
    p[0] = 1.0 / 6
    p[1, :, :, :4] = 0.25  # uniform over the 4 real keys; padded query rows hold junk below
    p[1, :, 4:, :] = torch.tensor([1.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    ent = M.attention_entropy(p, mask)
    torch.testing.assert_close(ent[:, 0], torch.tensor([math.log(6), math.log(4)], dtype=torch.float64))


def test_sink_mass_first_token_and_uniform() -> None:
    torch.testing.assert_close(M.sink_mass(_to_first(2, 4, 5)), torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(M.sink_mass(_uniform(1, 2, 5)), torch.full((1, 2), 0.2, dtype=torch.float64))
    torch.testing.assert_close(
        M.sink_mass(_uniform(1, 2, 5), sinks=(0, -1)), torch.full((1, 2), 0.4, dtype=torch.float64)
    )
    assert M.sink_rate(_to_first(3, 4, 5)).tolist() == [1.0, 1.0, 1.0]
    assert M.sink_rate(_uniform(1, 4, 5)).tolist() == [0.0]


def test_sink_mass_per_sequence_positions_and_received_sums_to_one() -> None:
    # [SEP] sits at a different position in each sequence: all attention goes to it.
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    sep = torch.tensor([[False, False, False, True], [False, False, True, False]])
    p = torch.zeros(2, 2, 4, 4, dtype=torch.float64)
    p[0, ..., 3] = 1.0
    p[1, ..., 2] = 1.0
    torch.testing.assert_close(M.sink_mass(p, sep, mask), torch.ones(2, 2, dtype=torch.float64))
    rec = M.attention_received(torch.softmax(torch.randn(2, 3, 4, 4, dtype=torch.float64), -1))
    torch.testing.assert_close(rec.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    pos, share = M.top_sinks(_to_first(2, 3, 6), k=2)
    assert pos[:, 0].tolist() == [0, 0] and share[:, 0].tolist() == [1.0, 1.0]


def test_mean_attention_distance() -> None:
    # grid 1x3 plus a class token; every patch attends to the patch two columns away or itself.
    p = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    p[0, 0, :, 0] = 1.0  # head 0: all to the class token -> no patch distance
    p[0, 1, 1, 3] = p[0, 1, 3, 1] = 1.0  # head 1: patches 0 <-> 2 (distance 2), patch 1 to itself
    p[0, 1, 2, 2] = 1.0
    p[0, 1, 0, 0] = 1.0
    d = M.mean_attention_distance(p, (1, 3), num_prefix_tokens=1, patch_size=16)
    torch.testing.assert_close(d, torch.tensor([[0.0, (2 + 0 + 2) / 3 * 16]], dtype=torch.float64))
    eye = torch.eye(6, dtype=torch.float64).expand(1, 1, 6, 6)
    assert M.mean_attention_distance(eye, (2, 3), num_prefix_tokens=0).item() == 0.0
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        M.mean_attention_distance(eye, (2, 2))


def test_waad_clips_distance_at_window() -> None:
    n, w = 8, 3
    p = _to_first(1, 1, n)  # every token attends to the first: distance t, clipped at W
    out = M.windowed_average_attention_distance(p, window=w)
    assert out[0, 0].tolist() == [min(t, w) for t in range(n)]
    eye = torch.eye(n, dtype=torch.float64).expand(1, 1, n, n)
    assert M.windowed_average_attention_distance(eye).abs().sum() == 0
    # causal uniform: WAAD_t = mean_{s<=t} min(t-s, W)
    expected = torch.tensor(
        [sum(min(t - s, w) for s in range(t + 1)) / (t + 1) for t in range(n)], dtype=torch.float64
    )
    torch.testing.assert_close(
        M.windowed_average_attention_distance(_causal_uniform(n), window=w)[0, 0], expected
    )
    assert M.metric_card("waad").defaults["window"] == 10


def test_fai_is_mean_attention_from_later_tokens() -> None:
    n = 5
    out = M.future_attention_influence(_causal_uniform(n))[0, 0]
    for s in range(n - 1):
        expected = sum(1 / (t + 1) for t in range(s + 1, n)) / (n - 1 - s)
        assert out[s].item() == pytest.approx(expected)
    assert math.isnan(out[-1].item())
    mask = torch.tensor([[True, True, True, False, False]])
    fai = M.future_attention_influence(_causal_uniform(n), mask=mask)[0, 0]
    assert fai[0].item() == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert math.isnan(fai[3].item()) and math.isnan(fai[2].item())


def test_head_similarity_and_redundancy() -> None:
    one_hot_a = _to_first(1, 1, 4)
    one_hot_b = torch.zeros_like(one_hot_a)
    one_hot_b[..., 1] = 1.0
    layer0 = torch.cat([one_hot_a, one_hot_a], dim=1)  # two identical heads
    dist = M.head_similarity([layer0, one_hot_b])
    assert dist.shape == (3, 3)
    torch.testing.assert_close(dist[0, 1], torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(dist[0, 2], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(dist, dist.T)
    red = M.head_redundancy([layer0, one_hot_b])
    torch.testing.assert_close(red, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))


def test_bad_inputs_raise_named_errors() -> None:
    p = _uniform(2, 1, 3)
    with pytest.raises(TypeError, match="mask"):
        M.attention_entropy(p, torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        M.attention_entropy(p, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="probs"):
        M.attention_entropy(torch.ones(3, 3))
    with pytest.raises(ValueError, match="window"):
        M.windowed_average_attention_distance(p, window=0)
    with pytest.raises(ValueError, match="sink positions"):
        M.sink_mass(p, sinks=(5,))
    with pytest.raises(KeyError, match="known"):
        M.metric_card("nope")


def test_every_metric_has_a_card() -> None:
    expected = {
        "entropy",
        "mean_attention_distance",
        "attention_received",
        "sink_mass",
        "sink_rate",
        "waad",
        "fai",
        "head_similarity",
        "head_redundancy",
        "head_importance",
        "ships",
    }
    assert expected <= set(M.METRICS)
    for card in M.METRICS.values():
        assert card.paper and card.definition and callable(card.fn)
