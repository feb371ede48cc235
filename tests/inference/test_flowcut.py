from __future__ import annotations

import pytest
import torch

from attnzoo.inference.flowcut import (
    FlowCutState,
    adaptive_prune_number,
    flowcut_scores,
    flowcut_step,
    flowcut_vision,
    semantic_attention,
)
from attnzoo.kernels.attention import attention_reference


def _layer(b: int, h: int, t: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for _ in range(3))
    _, probs = attention_reference(q, k, v, return_weights=True)
    hidden = torch.randn(b, t, h * d, generator=g, dtype=torch.float64)
    hidden[..., 0] = torch.arange(t, dtype=torch.float64)
    return hidden, probs, v


def test_semantic_attention_is_unscaled_value_softmax() -> None:
    _, _, v = _layer(2, 3, 9, 4)
    expected = (v[:, :, :1] @ v.transpose(-2, -1)).softmax(-1)[:, :, 0].mean(1)
    torch.testing.assert_close(semantic_attention(v), expected)


def test_scores_formula() -> None:
    g = torch.Generator().manual_seed(0)
    c, s, m = torch.rand(2, 5, generator=g), torch.rand(2, 5, generator=g), torch.randn(2, 5, 3, generator=g)
    expected = (c / c.sum(-1, keepdim=True) + s / s.sum(-1, keepdim=True)) * m.abs().sum(-1)
    torch.testing.assert_close(flowcut_scores(c, s, m), expected)


def test_uniform_cls_attention_prunes_nothing_adaptively() -> None:
    assert adaptive_prune_number(torch.full((1, 16), 1 / 16, dtype=torch.float64), 2, 4) == 0
    peaked = torch.full((1, 16), 1e-6, dtype=torch.float64)
    peaked[0, 3] = 1.0
    assert adaptive_prune_number(peaked, 1, 4) == 12
    with pytest.raises(ValueError, match="rpl"):
        adaptive_prune_number(peaked, 0, 4)


def test_step_keeps_cls_first_and_patches_in_order() -> None:
    hidden, probs, v = _layer(2, 2, 17, 4)
    state = FlowCutState.start(2, 16)
    out, state, info = flowcut_step(hidden, probs, v, state, rpl=0, target=6)
    assert out.shape == (2, 6, 8) and info.prune_num == 17
    assert torch.equal(out[:, 0], hidden[:, 0])
    positions = out[:, 1:, 0].long()
    assert torch.equal(positions, positions.sort(dim=1).values)
    assert torch.equal(positions - 1, state.kept)
    best = info.scores.topk(5, dim=1).indices.sort(dim=1).values
    assert torch.equal(state.kept, best)
    # at or below target: nothing is scored and nothing changes
    same, state2, info2 = flowcut_step(out, probs[:, :, :6, :6], v[:, :, :6], state, rpl=-1, target=6)
    assert same is out and info2.cls_attention is None and state2 is state


def test_odd_rpl_updates_ema_without_pruning() -> None:
    hidden, probs, v = _layer(1, 2, 11, 4)
    state = FlowCutState(torch.ones(1, 10, dtype=torch.float64), torch.arange(10).unsqueeze(0))
    out, new, info = flowcut_step(hidden, probs, v, state, rpl=3, target=4)
    assert out is hidden and info.prune_num is None
    torch.testing.assert_close(new.cumulative, 0.5 + 0.5 * info.scores)


@pytest.mark.parametrize("fixture", ["tiny_clip_vision", "tiny_vit"])
def test_flowcut_on_hf_vision_encoder(fixture: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(fixture)
    size = model.config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    n = (size // model.config.patch_size) ** 2
    target = 6
    with torch.no_grad():
        plain = model(pixel_values=pixels).last_hidden_state
        with flowcut_vision(model, target) as result:
            pruned = model(pixel_values=pixels).last_hidden_state
        with flowcut_vision(model, n + 1):
            unpruned = model(pixel_values=pixels).last_hidden_state
    assert plain.shape[1] == n + 1 and pruned.shape == (2, target, plain.shape[-1])
    kept = result["kept"]
    assert kept.shape == (2, target - 1)
    assert torch.equal(kept, kept.sort(dim=1).values) and int(kept.max()) < n
    assert len(result["layers"]) == model.config.num_hidden_layers
    torch.testing.assert_close(unpruned, plain, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "eager"
