"""region_attention: equals dense masked attention_reference in float64 on random region maps,
handles unbalanced regions without padding to the largest, never forms an (HW)^2 tensor, and the
128x128 / 64-region / 256-dim forward stays under 1 GiB."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from tests.helpers import LargestStorage, peak_bytes

import attnzoo
from attnzoo.kernels import attention_reference, merge_heads, split_heads
from attnzoo.kernels.grouped import segment_attention, segment_mask
from attnzoo.mechanisms.token_mixer.region_attention import RegionAttention
from attnzoo.official import load
from attnzoo.official.rat_region_attention import convert_rat_region_attention, region_map_from_mask


def _oracle(m: RegionAttention, x: torch.Tensor, region_map: torch.Tensor) -> torch.Tensor:
    b, n, _ = x.shape
    q, k, v = split_heads(m.qkv(x), 3 * m.num_heads).chunk(3, dim=1)
    mask = segment_mask(region_map.reshape(b, n))
    return m.proj(merge_heads(attention_reference(q, k, v, mask=mask, scale=m.scale)))


def _maps(b: int, h: int, w: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    n = h * w
    unbalanced = torch.zeros(b, n, dtype=torch.long)
    unbalanced[:, : n // 3] = torch.arange(n // 3) + 1  # many singletons + one big region
    return {
        "one_region": torch.full((b, h, w), 7),
        "singletons": torch.arange(b * n).view(b, h, w),
        "random_gaps": torch.randint(0, 5, (b, h, w), generator=g) * 4,
        "negative": torch.randint(-3, 3, (b, h, w), generator=g),
        "unbalanced": unbalanced[:, torch.randperm(n, generator=g)].view(b, h, w),
        "blocks": torch.arange(h).div(2, rounding_mode="floor")[:, None].expand(b, h, w) * 10
        + torch.arange(w).div(3, rounding_mode="floor"),
    }


@pytest.mark.parametrize(
    "kind", ["one_region", "singletons", "random_gaps", "negative", "unbalanced", "blocks"]
)
@pytest.mark.parametrize("bucket_ratio", [1.0, 1.5, 1000.0])
def test_equals_dense_masked_reference_float64(kind: str, bucket_ratio: float) -> None:
    g = torch.Generator().manual_seed(0)
    h, w = 5, 7
    region_map = _maps(2, h, w, g)[kind]
    m = RegionAttention(12, 3, bucket_ratio=bucket_ratio).double()
    x = torch.randn(2, h * w, 12, dtype=torch.float64, requires_grad=True)
    out = m(x, size=(h, w), region_map=region_map)
    ref = _oracle(m, x, region_map)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *m.parameters()], grad)
    want = torch.autograd.grad(ref, [x, *m.parameters()], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_kernel_value_dim_and_scale() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(2, 2, 20, 3, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 2, 20, 5, generator=g, dtype=torch.float64)
    seg = torch.randint(0, 4, (2, 20), generator=g)
    out = segment_attention(q, k, v, seg, scale=0.9)
    torch.testing.assert_close(out, attention_reference(q, k, v, mask=segment_mask(seg), scale=0.9))


def test_default_scale_is_official_num_heads() -> None:
    assert RegionAttention(64, 4).scale == pytest.approx(0.5)
    assert RegionAttention(64, 4, scale=0.125).scale == 0.125


def test_unbalanced_regions_are_not_padded_to_the_largest() -> None:
    """One region of 1024 tokens and 512 regions of 2: padding all to 1024 would need 513*1024
    tokens per tensor; bucketing keeps every tensor O(N)."""
    n, h, d = 2048, 2, 4
    seg = torch.cat(
        [torch.zeros(1024, dtype=torch.long), torch.arange(1024).div(2, rounding_mode="floor") + 1]
    )
    seg = seg[torch.randperm(n)].unsqueeze(0)
    q, k, v = (torch.randn(1, h, n, d) for _ in range(3))
    with LargestStorage() as mode:
        segment_attention(q, k, v, seg)
    assert mode.largest <= 2 * n * h * d


def test_no_quadratic_tensor_forward_backward() -> None:
    m = RegionAttention(16, 2)
    hw = 32
    x = torch.randn(1, hw * hw, 16, requires_grad=True)
    region_map = torch.randint(0, 6, (1, hw, hw))
    with LargestStorage() as mode:
        m(x, size=(hw, hw), region_map=region_map).sum().backward()
    assert mode.largest < (hw * hw) ** 2 // 4
    assert mode.largest <= 3 * 16 * hw * hw


@pytest.mark.slow
def test_128x128_64_regions_forward_under_1gib_without_hw_squared() -> None:
    """The official module needs ~16 GiB here (dense (HW)^2 mask and scores)."""
    hw, dim, heads = 128, 256, 8
    m = RegionAttention(dim, heads).eval()
    g = torch.Generator().manual_seed(0)
    seeds = torch.rand(64, 2, generator=g) * hw  # Voronoi regions of 64 random seeds
    grid = torch.stack(torch.meshgrid(torch.arange(hw), torch.arange(hw), indexing="ij"), -1).float()
    region_map = torch.cdist(grid.view(-1, 2), seeds).argmin(-1).view(1, hw, hw)
    x = torch.randn(1, hw * hw, dim)

    def run() -> None:
        with torch.no_grad():
            m(x, size=(hw, hw), region_map=region_map)

    with LargestStorage() as mode:
        run()
    assert mode.largest < (hw * hw) ** 2 // 16
    assert peak_bytes(run) < 2**30


_RSS_SCRIPT = """
import resource, sys, torch
from attnzoo.mechanisms.token_mixer.region_attention import RegionAttention
hw, dim = 128, 256
m = RegionAttention(dim, 8).eval()
g = torch.Generator().manual_seed(0)
seeds = torch.rand(64, 2, generator=g) * hw
grid = torch.stack(torch.meshgrid(torch.arange(hw), torch.arange(hw), indexing="ij"), -1).float()
region_map = torch.cdist(grid.view(-1, 2), seeds).argmin(-1).view(1, hw, hw)
x = torch.randn(1, hw * hw, dim)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    m(x, size=(hw, hw), region_map=region_map)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.slow
def test_128x128_forward_resident_memory_growth_under_1gib() -> None:
    """Peak resident set growth (KiB, Linux ru_maxrss) of the forward in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, env=env, check=True
    )
    assert int(run.stdout.strip().splitlines()[-1]) * 1024 < 2**30


def test_missing_or_bad_region_map() -> None:
    m = RegionAttention(8, 2)
    x = torch.randn(2, 12, 8)
    with pytest.raises(ValueError, match="region_map"):
        m(x, size=(3, 4))
    with pytest.raises(TypeError, match="region_map"):
        m(x, size=(3, 4), region_map=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="region_map"):
        m(x, size=(3, 4), region_map=torch.zeros(2, 4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="region_map"):
        m(x, size=(3, 4), region_map=torch.zeros(2, 3, 4, dtype=torch.bool))


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        RegionAttention(10, 4)
    with pytest.raises(ValueError, match="bucket_ratio"):
        RegionAttention(8, 2, bucket_ratio=0.5)
    with pytest.raises(ValueError, match="scale"):
        RegionAttention(8, 2, scale=0.0)


def test_capture_records_dense_region_pattern() -> None:
    m = RegionAttention(8, 2).eval()
    x = torch.randn(1, 12, 8)
    region_map = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, 1], [2, 2, 2, 0]]])
    with attnzoo.capture(m) as cap:
        out = m(x, size=(3, 4), region_map=region_map)
    torch.testing.assert_close(out, m(x, size=(3, 4), region_map=region_map))
    (rec,) = cap[""]
    assert rec.probs.shape == (1, 2, 12, 12)
    cross = ~segment_mask(region_map.view(1, 12))
    assert torch.all(rec.probs.masked_select(cross) == 0)


def test_example_kwargs_give_several_regions() -> None:
    m = attnzoo.create("rat", dim=8, num_heads=2)
    kw = m.example_kwargs(
        2, (5, 7), dtype=torch.float32, device=None, generator=torch.Generator().manual_seed(0)
    )
    assert kw["region_map"].shape == (2, 5, 7) and kw["region_map"].unique().numel() > 2


# ---------------------------------------------------------------- official format


def _official_mask(region_map: torch.Tensor) -> torch.Tensor:
    b = region_map.shape[0]
    same = segment_mask(region_map.view(b, -1)).squeeze(1)
    return (~same).double() * -1000.0


def test_converter_and_mask_round_trip() -> None:
    sd = {
        "qkv.weight": torch.randn(24, 8, 1, 1),
        "qkv.bias": torch.randn(24),
        "project_out.weight": torch.randn(8, 8, 1, 1),
        "project_out.bias": torch.randn(8),
    }
    conv = convert_rat_region_attention(sd)
    assert conv["qkv.weight"].shape == (24, 8) and conv["proj.weight"].shape == (8, 8)
    region_map = torch.randint(0, 3, (2, 3, 4)) * 5
    labels = region_map_from_mask(_official_mask(region_map), (3, 4))
    assert torch.equal(segment_mask(labels.view(2, -1)), segment_mask(region_map.view(2, -1)))
    run = load("rat_region_attention", {"n_feat": 8, "num_heads": 2}, sd)
    x = torch.randn(2, 8, 3, 4)
    (out,) = run(x=x, mask=_official_mask(region_map).float())
    tokens = x.flatten(2).transpose(1, 2)
    want = run.module(tokens, size=(3, 4), region_map=region_map).transpose(1, 2).reshape(2, 8, 3, 4)
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="disagrees"):
        run(x=x, mask=_official_mask(region_map), region_map=torch.zeros_like(region_map))


def test_mask_that_is_not_a_partition_is_rejected() -> None:
    mask = torch.full((1, 3, 3), -1000.0)
    mask[0].fill_diagonal_(0)
    mask[0, 0, 1] = 0  # 0 sees 1 but 1 does not see 0
    with pytest.raises(ValueError, match="partition"):
        region_map_from_mask(mask, (1, 3))
