"""ContMix (OverLoCK): clamped-window kernel, dynamic kernels, LePE reparameterisation, block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.kernels.clamped_window import neighborhood_aggregate, neighborhood_bias, window_starts
from attnzoo.mechanisms.feature_map.contmix import ContMix, ContMixBlock, DilatedReparamConv


def _randomise(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2
    for name, b in m.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=g) * 0.2)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return m.eval()


@pytest.mark.parametrize("h,w,k", [(5, 7, 3), (6, 6, 5), (7, 9, 7), (5, 5, 5)])
def test_clamped_window_matches_loops_and_unfold(h: int, w: int, k: int) -> None:
    b, g, c = 2, 3, 4
    attn = torch.randn(b, g, h, w, k * k, dtype=torch.float64).softmax(-1)
    value = torch.randn(b, g, c, h, w, dtype=torch.float64)
    out = neighborhood_aggregate(attn, value, k)
    loops = torch.zeros(b, g, h, w, c, dtype=torch.float64)
    for i in range(h):
        si = min(max(i - k // 2, 0), h - k)
        for j in range(w):
            sj = min(max(j - k // 2, 0), w - k)
            win = value[:, :, :, si : si + k, sj : sj + k].reshape(b, g, c, k * k)
            loops[:, :, i, j] = (win * attn[:, :, i, j, None, :]).sum(-1)
    torch.testing.assert_close(out, loops)
    # the official fallback: unfold the valid windows, replicate-pad them to the full grid
    p = k // 2
    win = F.unfold(value.reshape(b, g * c, h, w), k).reshape(b, g * c * k * k, h - 2 * p, w - 2 * p)
    win = F.pad(win, (p, p, p, p), mode="replicate").reshape(b, g, c, k * k, h, w)
    torch.testing.assert_close(out, torch.einsum("bghwt,bgcthw->bghwc", attn, win))


def test_neighborhood_bias_is_relative_offset() -> None:
    k, h, w = 3, 4, 6
    rpb = torch.randn(2, 2 * k - 1, 2 * k - 1)
    bias = neighborhood_bias(rpb, h, w, k)
    si, sj = window_starts(h, k), window_starts(w, k)
    for i in range(h):
        for j in range(w):
            for t in range(k):
                for u in range(k):
                    di, dj = int(si[i]) + t - i, int(sj[j]) + u - j
                    assert torch.equal(bias[:, i, j, t * k + u], rpb[:, di + k - 1, dj + k - 1])
    with pytest.raises(ValueError, match="exceeds"):
        window_starts(2, 3)


def test_dynamic_kernels_capture_and_rows() -> None:
    m = _randomise(ContMix(16, 5, 3, 2).double())
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    with attnzoo.capture(m) as cap:
        y = m(x)
    small, large = cap[""]
    assert small.kind == "dynamic_kernel" and small.probs.shape == (2, 4, 42, 9)
    assert large.probs.shape == (2, 4, 42, 25)
    torch.testing.assert_close(large.probs.sum(-1), torch.ones(2, 4, 42, dtype=torch.float64))
    torch.testing.assert_close(y, m(x))


def test_dynamic_kernel_equations() -> None:
    """The branch written out per pixel: affinities to pooled regions -> logits -> window softmax."""
    m = _randomise(ContMix(8, 5, 3, 1).double())
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64)
    q = m.query(x) * (8 // 2) ** -0.5  # (1, 4, 5, 6): G = 2 groups of 2 channels
    kk = m.key(F.adaptive_avg_pool2d(x, 7)).reshape(1, 4, 49)
    v = m.value(x)
    y = m.dynamic_kernels(x)
    for gi in range(2):
        for i in range(5):
            for j in range(6):
                aff = q[0, 2 * gi : 2 * gi + 2, i, j] @ kk[0, 2 * gi : 2 * gi + 2]
                logits = m.weight_proj(aff)
                for branch, (ks, rpb, off) in enumerate(((3, m.rpb_small, 0), (5, m.rpb_large, 9))):
                    lg = logits[off : off + ks * ks].reshape(ks, ks)
                    si, sj = min(max(i - ks // 2, 0), 5 - ks), min(max(j - ks // 2, 0), 6 - ks)
                    r0, c0 = si - i + ks - 1, sj - j + ks - 1
                    bias = rpb[gi, r0 : r0 + ks, c0 : c0 + ks]
                    a = (lg + bias).flatten().softmax(0).reshape(ks, ks)
                    ch = branch * 4 + 2 * gi
                    want = (v[0, ch : ch + 2, si : si + ks, sj : sj + ks] * a).sum((-1, -2))
                    torch.testing.assert_close(y[0, ch : ch + 2, i, j], want)


def test_small_inputs_are_resized_like_the_official_code() -> None:
    m = ContMix(8, 7, 3, 1)
    assert m.dynamic_size(9, 11) == (9, 11)
    assert m.dynamic_size(3, 4) == (7, 9)
    assert m.dynamic_size(5, 5) == (7, 7)
    assert m.dynamic_size(6, 2) == (21, 7)
    assert m.dynamic_size(5, 45) == (7, 62)  # int(7 / 5 * 45) = int(62.99999999999999)
    _randomise(m.double())
    assert m(torch.randn(2, 8, 3, 4, dtype=torch.float64)).shape == (2, 8, 3, 4)


@pytest.mark.parametrize("k", [5, 7, 9, 13])
def test_lepe_fuse_is_exact(k: int) -> None:
    m = _randomise(DilatedReparamConv(6, k).double())
    x = torch.randn(2, 6, 11, 12, dtype=torch.float64)
    y = m(x)
    m.fuse()
    assert m.fused and len(m.branches) == 0 and m.bn is None
    torch.testing.assert_close(m(x), y)


def test_block_residual_forms() -> None:
    for res_scale in (False, True):
        blk = _randomise(ContMixBlock(8, 5, 3, 1, 2.0, res_scale=res_scale, ls_init_value=0.5).double())
        x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
        x1 = blk.dwconv1(x)
        y = blk.mixer(blk.norm1(x1))
        x2 = blk.ls1(x1) + y if res_scale else x1 + blk.ls1(y)
        x3 = blk.dwconv2(x2)
        z = blk.mlp(blk.norm2(x3))
        want = blk.ls2(x3) + z if res_scale else x3 + blk.ls2(z)
        torch.testing.assert_close(blk(x), want)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="channels"):
        ContMix(12, 5, 3, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        ContMix(8, 6, 3, 1)
    with pytest.raises(ValueError, match="smk_size"):
        ContMix(8, 5, 7, 1)


def test_official_deploy_checkpoint_loads() -> None:
    """A reparameterised (deploy=True) official checkpoint maps onto fused_lepe=True."""
    from attnzoo.official import load
    from attnzoo.official.overlock_contmix import _PREFIXES

    blk = _randomise(ContMixBlock(8, 5, 3, 1, 2.0, ls_init_value=0.5).double())
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    want = blk(x)
    blk.mixer.lepe.fuse()
    torch.testing.assert_close(blk(x), want)
    back = {ours: theirs for theirs, ours in _PREFIXES}
    official = {}
    for key, value in blk.state_dict().items():
        prefix = next(p for p in sorted(back, key=len, reverse=True) if key.startswith(p))
        name = back[prefix] + key[len(prefix) :]
        if name == "weight_proj.weight":
            value = value[:, :, None, None]
        elif name.startswith(("ls1.weight", "ls2.weight")):
            value = value[:, None, None, None]
        elif name.startswith("mlp.3."):
            value = value[None, :, None, None]
        official[name] = value
    constructor = {"dim": 8, "kernel_size": 5, "smk_size": 3, "num_heads": 1, "mlp_ratio": 2,
                   "ls_init_value": 0.5, "deploy": True}
    run = load("overlock_contmix", constructor, official)
    torch.testing.assert_close(run(x=x)[0], want)
