"""s2_attention: SinkLoRA-style (non-cyclic shift + sinks) against dense masked attention per head half,
LongLoRA's cyclic variant against an explicit roll/group/roll-back oracle, reach and efficiency."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import LargestStorage

from attnzoo.kernels import attention_reference, merge_heads, split_heads
from attnzoo.kernels.windowed import group_mask
from attnzoo.mechanisms.token_mixer.s2_attention import ShiftedSparseAttention


def _qkv(m: ShiftedSparseAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return split_heads(m.qkv(x), 3 * m.num_heads).chunk(3, dim=1)


def _dense_reference(m: ShiftedSparseAttention, x: torch.Tensor) -> torch.Tensor:
    n, half, g = x.shape[1], m.num_heads // 2, m.group_size
    q, k, v = _qkv(m, x)
    outs = []
    for heads, offset in ((slice(0, half), 0), (slice(half, None), g // 2)):
        mask = group_mask(n, g, offset=offset, num_sink=m.num_sink, causal=m.causal)
        outs.append(attention_reference(q[:, heads], k[:, heads], v[:, heads], mask=mask))
    return m.proj(merge_heads(torch.cat(outs, dim=1)))


def _longlora_reference(m: ShiftedSparseAttention, x: torch.Tensor) -> torch.Tensor:
    """LongLoRA S2-Attn written out: roll the second head half by -G/2, causal attention inside each
    group of G consecutive (rolled) tokens, roll back."""
    b, n, _ = x.shape
    half, g = m.num_heads // 2, m.group_size
    q, k, v = (t.clone() for t in _qkv(m, x))
    for t in (q, k, v):
        t[:, half:] = t[:, half:].roll(-(g // 2), dims=2)
    grouped = [t.reshape(b, m.num_heads, n // g, g, t.shape[-1]) for t in (q, k, v)]
    out = attention_reference(*grouped, causal=True).reshape(b, m.num_heads, n, -1)
    out[:, half:] = out[:, half:].roll(g // 2, dims=2)
    return m.proj(merge_heads(out))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [3, 7, 13, 32])
@pytest.mark.parametrize(("group", "sinks"), [(4, 0), (4, 1), (6, 4), (8, 4)])
def test_matches_dense_masked_reference(causal: bool, n: int, group: int, sinks: int) -> None:
    m = ShiftedSparseAttention(12, 4, group, num_sink=sinks, causal=causal).double().eval()
    x = torch.randn(2, n, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _dense_reference(m, x), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(("n", "group"), [(8, 4), (12, 6), (16, 8)])
def test_cyclic_is_longlora(n: int, group: int) -> None:
    m = ShiftedSparseAttention(8, 2, group, num_sink=0, cyclic=True).double().eval()
    x = torch.randn(2, n, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _longlora_reference(m, x), atol=1e-12, rtol=1e-10)


def test_cyclic_leaks_the_future_and_default_does_not() -> None:
    x = torch.randn(1, 8, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, -1] += 1.0
    for cyclic, leaks in ((True, True), (False, False)):
        m = ShiftedSparseAttention(8, 2, 4, num_sink=0, cyclic=cyclic).double().eval()
        with torch.no_grad():
            changed = not torch.allclose(m(x)[:, 0], m(x2)[:, 0])
        assert changed == leaks


def test_reach_is_union_of_the_two_head_patterns() -> None:
    n, g, s = 11, 4, 1
    m = ShiftedSparseAttention(8, 2, g, num_sink=s).double()
    x = torch.randn(1, n, 8, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: m(t), x)
    reach = jac.abs().sum(dim=(0, 2, 3, 5)) > 0
    plain = group_mask(n, g, num_sink=s, causal=True)
    shifted = group_mask(n, g, offset=g // 2, num_sink=s, causal=True)
    assert torch.equal(reach, plain | shifted)


def test_long_sequence_has_no_n_by_n_tensor() -> None:
    n = 1024
    m = ShiftedSparseAttention(16, 2, 32, num_sink=4).eval()
    with LargestStorage() as probe, torch.no_grad():
        m(torch.randn(1, n, 16))
    assert probe.largest < n * n // 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        ShiftedSparseAttention(9, 3, 4)
    with pytest.raises(ValueError, match="even"):
        ShiftedSparseAttention(12, 3, 4)
    with pytest.raises(ValueError, match="group_size"):
        ShiftedSparseAttention(8, 2, 1)
    with pytest.raises(ValueError, match="num_sink"):
        ShiftedSparseAttention(8, 2, 4, num_sink=-1)
    with pytest.raises(ValueError, match="num_sink=0"):
        ShiftedSparseAttention(8, 2, 4, num_sink=4, cyclic=True)
    m = ShiftedSparseAttention(8, 2, 4, num_sink=0, cyclic=True)
    with pytest.raises(ValueError, match="group_size"):
        m(torch.randn(1, 7, 8))
