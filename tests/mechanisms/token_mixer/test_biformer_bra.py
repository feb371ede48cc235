"""biformer_bra: equals a dense masked float64 oracle of the paper's equations (with the official
padding/scale conventions), the converter round-trips official checkpoints, and the compute path
holds less memory than a reimplementation of the official gather path, forward and backward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import LargestStorage, peak_bytes

import attnzoo
from attnzoo.kernels import attention_reference
from attnzoo.kernels.grouped import routed_region_attention
from attnzoo.mechanisms.token_mixer.biformer_bra import BiLevelRoutingAttention
from attnzoo.official import load
from attnzoo.official.biformer_bra import build_biformer_bra, convert_biformer_bra


def _oracle(m: BiLevelRoutingAttention, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Dense masked form in image order: pixel i may attend to pixel j iff region(j) is routed
    from region(i); routing from one-hot region means. Independent of the region-major path."""
    b, _, c = x.shape
    h, w = size
    s = m.n_win
    hp, wp = -(-h // s) * s, -(-w // s) * s
    img = F.pad(x.reshape(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))
    q, k, v = m.qkv(img.reshape(b, hp * wp, c)).split([m.qk_dim, m.qk_dim, c], dim=-1)
    rows = torch.arange(hp).div(hp // s, rounding_mode="floor")
    cols = torch.arange(wp).div(wp // s, rounding_mode="floor")
    region = (rows[:, None] * s + cols[None, :]).reshape(-1)  # (Np,)
    onehot = F.one_hot(region, s * s).to(x.dtype).T  # (R, Np)
    onehot = onehot / onehot.sum(1, keepdim=True)
    logits = (onehot @ q * m.scale) @ (onehot @ k).transpose(1, 2)  # (B, R, R)
    routed = torch.zeros_like(logits, dtype=torch.bool)
    routed.scatter_(2, logits.topk(m.topk, dim=-1).indices, True)
    mask = routed[:, region][:, :, region].unsqueeze(1)  # (B, 1, Np, Np)
    heads = m.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, hp * wp, heads, -1).transpose(1, 2)

    out = attention_reference(split(q), split(k), split(v), mask=mask, scale=m.scale)
    out = out.transpose(1, 2).reshape(b, hp, wp, c)
    if m.lepe is not None:
        v_img = v.reshape(b, hp, wp, c).permute(0, 3, 1, 2)
        out = out + m.lepe(v_img).permute(0, 2, 3, 1)
    return m.proj(out[:, :h, :w]).reshape(b, h * w, c)


CONFIGS: list[tuple[dict[str, Any], tuple[int, int]]] = [
    ({"dim": 16, "num_heads": 2, "n_win": 2, "topk": 1}, (4, 6)),
    ({"dim": 16, "num_heads": 2, "n_win": 3, "topk": 4, "side_dwconv": 5}, (7, 5)),  # padded
    ({"dim": 12, "num_heads": 3, "n_win": 2, "topk": 4}, (3, 3)),  # topk == R: dense path
    ({"dim": 16, "num_heads": 4, "n_win": 2, "topk": 2, "qk_dim": 8, "qk_scale": 0.7}, (6, 4)),
    ({"dim": 8, "num_heads": 2, "n_win": 4, "topk": 3, "side_dwconv": 0, "out_proj": False}, (2, 3)),
]


@pytest.mark.parametrize(("kwargs", "size"), CONFIGS)
def test_matches_dense_masked_oracle_float64(kwargs: dict[str, Any], size: tuple[int, int]) -> None:
    m = BiLevelRoutingAttention(**kwargs).double()
    x = torch.randn(2, size[0] * size[1], kwargs["dim"], dtype=torch.float64, requires_grad=True)
    out = m(x, size=size)
    ref = _oracle(m, x, size)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x, g)
    (want,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_scale_is_full_qk_width_not_head_width() -> None:
    m = BiLevelRoutingAttention(32, 4, 2, 2, qk_dim=16)
    assert m.scale == pytest.approx(16**-0.5)


def test_routing_picks_topk_regions_of_region_means() -> None:
    m = BiLevelRoutingAttention(8, 2, n_win=2, topk=2).double()
    q = torch.randn(3, 4, 5, 8, dtype=torch.float64)
    k = torch.randn(3, 4, 5, 8, dtype=torch.float64)
    routes = m._route(q, k)
    logits = torch.einsum("brc,bsc->brs", q.mean(2), k.mean(2)) * m.scale
    best = logits.argsort(dim=-1, descending=True)[..., :2]
    assert torch.equal(routes.sort(-1).values, best.sort(-1).values)


def test_kernel_duplicate_free_routes_equal_dense_mask() -> None:
    g = torch.Generator().manual_seed(3)
    b, r, t, h, d = 2, 4, 3, 2, 5
    q, k, v = (torch.randn(b, r, t, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    routes = torch.stack([torch.randperm(r, generator=g)[:2] for _ in range(b * r)]).view(b, r, 2)
    out = routed_region_attention(q, k, v, routes, scale=0.4)
    allowed = torch.zeros(b, r, r, dtype=torch.bool).scatter_(2, routes, True)
    region = torch.arange(r).repeat_interleave(t)
    mask = allowed[:, region][:, :, region].unsqueeze(1)
    flat = [x.reshape(b, r * t, h, d).transpose(1, 2) for x in (q, k, v)]
    ref = attention_reference(*flat, mask=mask, scale=0.4).transpose(1, 2).reshape(b, r, t, h, d)
    torch.testing.assert_close(out, ref)


def test_auto_pad_false_requires_divisible_size() -> None:
    m = BiLevelRoutingAttention(8, 2, n_win=2, topk=1, auto_pad=False)
    m(torch.randn(1, 16, 8), size=(4, 4))
    with pytest.raises(ValueError, match="auto_pad"):
        m(torch.randn(1, 15, 8), size=(5, 3))


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"topk": 5, "n_win": 2}, "topk"),
        ({"topk": 0}, "topk"),
        ({"side_dwconv": 4}, "side_dwconv"),
        ({"qk_dim": 10, "num_heads": 4}, "num_heads"),
        ({"qk_scale": 0.0}, "qk_scale"),
        ({"n_win": 0}, "n_win"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        BiLevelRoutingAttention(**{"dim": 16, "num_heads": 2, **kwargs})


def test_registry_and_aliases() -> None:
    assert attnzoo.card("bra").name == "biformer_bra"
    assert isinstance(
        attnzoo.create("biformer", dim=8, num_heads=2, n_win=2, topk=1), BiLevelRoutingAttention
    )


# ---------------------------------------------------------------- official format


def _official_state_dict(dim: int, side: int, qkvo: bool = True) -> dict[str, torch.Tensor]:
    sd = {
        "qkv.qkv.weight": torch.randn(3 * dim, dim),
        "qkv.qkv.bias": torch.randn(3 * dim),
        "lepe.weight": torch.randn(dim, 1, side, side),
        "lepe.bias": torch.randn(dim),
    }
    if qkvo:
        sd |= {"wo.weight": torch.randn(dim, dim), "wo.bias": torch.randn(dim)}
    return sd


def test_converter_maps_every_key() -> None:
    sd = _official_state_dict(8, 3)
    conv = convert_biformer_bra(sd)
    assert set(conv) == {"qkv.weight", "qkv.bias", "lepe.weight", "lepe.bias", "proj.weight", "proj.bias"}
    run = load("biformer_bra", {"dim": 8, "num_heads": 2, "n_win": 2, "topk": 2}, sd)
    assert torch.equal(run.module.proj.weight, sd["wo.weight"])
    (out,) = run(x=torch.randn(1, 4, 6, 8))
    assert out.shape == (1, 4, 6, 8)


def test_param_attention_qkv_has_no_output_linear() -> None:
    run = load(
        "biformer_bra",
        {"dim": 8, "num_heads": 2, "n_win": 2, "topk": 1, "param_attention": "qkv"},
        _official_state_dict(8, 3, qkvo=False),
    )
    assert isinstance(run.module.proj, torch.nn.Identity)


@pytest.mark.parametrize(
    "option",
    [{"kv_downsample_mode": "ada_avgpool"}, {"soft_routing": True}, {"diff_routing": True}],
)
def test_unimplemented_official_options_raise(option: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(option))):
        build_biformer_bra({"dim": 8, "num_heads": 2, **option})


def test_official_default_auto_pad_is_false() -> None:
    assert build_biformer_bra({"dim": 8, "num_heads": 2}).auto_pad is False
    assert build_biformer_bra({"dim": 8, "num_heads": 2, "qk_scale": None}).scale == pytest.approx(8**-0.5)


def test_capture_records_routed_attention() -> None:
    m = BiLevelRoutingAttention(8, 2, n_win=2, topk=2).eval()
    x = torch.randn(1, 16, 8)
    with attnzoo.capture(m) as cap:
        out = m(x, size=(4, 4))
    torch.testing.assert_close(out, m(x, size=(4, 4)))
    (rec,) = cap[""]
    assert rec.probs.shape == (4, 2, 4, 8)
    torch.testing.assert_close(rec.probs.sum(-1), torch.ones(4, 2, 4))


# ---------------------------------------------------------------- efficiency


def _official_gather_path(m: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Reimplementation of the official op sequence (NHWC in/out): partition, project, gather from
    an expand-ed (B, R, R, T, C) view, explicit scores/softmax, LePE on a contiguous V image."""
    b, hh, ww, c = x.shape
    s, topk, heads, qd = m.n_win, m.topk, m.num_heads, m.qk_dim
    rh, rw = hh // s, ww // s
    r, t = s * s, rh * rw
    xr = x.reshape(b, s, rh, s, rw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, r, rh, rw, c)
    q, kv = m.qkv(xr).split([qd, qd + c], dim=-1)
    q_win, k_win = q.mean([2, 3]), kv[..., :qd].mean([2, 3])
    v_img = kv[..., qd:].reshape(b, s, s, rh, rw, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hh, ww)
    lepe = m.lepe(v_img.contiguous()).permute(0, 2, 3, 1)
    logits = (q_win.detach() * m.scale) @ k_win.detach().transpose(-2, -1)
    idx = logits.topk(topk, dim=-1).indices
    kv_pix = kv.reshape(b, r, t, qd + c)
    sel = torch.gather(
        kv_pix.view(b, 1, r, t, qd + c).expand(-1, r, -1, -1, -1),
        2,
        idx.view(b, r, topk, 1, 1).expand(-1, -1, -1, t, qd + c),
    )
    k_sel, v_sel = sel.split([qd, c], dim=-1)
    k_sel = k_sel.reshape(b * r, topk * t, heads, -1).permute(0, 2, 3, 1)
    v_sel = v_sel.reshape(b * r, topk * t, heads, -1).transpose(1, 2)
    q_pix = q.reshape(b * r, t, heads, -1).transpose(1, 2)
    attn = ((q_pix * m.scale) @ k_sel).softmax(dim=-1)
    out = (
        (attn @ v_sel).reshape(b, s, s, heads, rh, rw, -1).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hh, ww, c)
    )
    return m.proj(out + lepe)


# BiFormer-T stages at 224x224 (stage 1..3) and a 512x512 stage-1 crop with n_win 8 and 16.
STAGES = [(56, 64, 2, 7, 1), (28, 128, 4, 7, 4), (14, 256, 8, 7, 16), (128, 64, 2, 8, 1), (128, 64, 2, 16, 1)]


def _stage(
    hw: int, dim: int, heads: int, n_win: int, topk: int
) -> tuple[BiLevelRoutingAttention, torch.Tensor]:
    m = BiLevelRoutingAttention(dim, heads, n_win, topk, side_dwconv=5)
    return m, torch.randn(1, hw, hw, dim)


def test_no_score_tensor_and_no_expanded_gather_gradient() -> None:
    """Forward+backward never allocate the (B*R, h, T, topk*T) scores nor R copies of K/V."""
    hw, dim, heads, n_win, topk = 32, 16, 2, 4, 2
    m, x = _stage(hw, dim, heads, n_win, topk)
    x.requires_grad_(True)
    r, t = n_win * n_win, (hw // n_win) ** 2
    scores = r * heads * t * topk * t
    kv_copies_r = r * hw * hw * 2 * dim
    with LargestStorage() as mode:
        m(x.reshape(1, hw * hw, dim), size=(hw, hw)).sum().backward()
    assert mode.largest <= topk * hw * hw * 3 * dim
    assert mode.largest < scores and mode.largest < kv_copies_r
    with LargestStorage() as official:
        _official_gather_path(m, x).sum().backward()
    assert official.largest >= kv_copies_r  # the expand-ed gather's backward


def test_inference_gathers_in_chunks_bounded_by_kv() -> None:
    """Without autograd the routed copies are gathered chunk by chunk: no tensor exceeds the qkv
    projection even with topk = 12 of 16 regions, and the result equals the one-shot path."""
    hw, dim = 32, 16
    m = BiLevelRoutingAttention(dim, 2, n_win=4, topk=12).double()
    x = torch.randn(1, hw * hw, dim, dtype=torch.float64)
    with torch.no_grad(), LargestStorage() as mode:
        chunked = m(x, size=(hw, hw))
    assert mode.largest <= 3 * dim * hw * hw < 12 * dim * hw * hw
    one_shot = m(x.requires_grad_(True), size=(hw, hw))
    torch.testing.assert_close(chunked, one_shot.detach())
    torch.testing.assert_close(chunked, _oracle(m, x.detach(), (hw, hw)))


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES, ids=[f"{s[0]}px-c{s[1]}-n{s[3]}-k{s[4]}" for s in STAGES])
def test_peak_memory_not_above_official_gather_path(stage: tuple[int, int, int, int, int]) -> None:
    m, x = _stage(*stage)
    b, hh, ww, c = x.shape
    with torch.no_grad():
        ours = m(x.reshape(b, hh * ww, c), size=(hh, ww)).reshape(b, hh, ww, c)
        torch.testing.assert_close(ours, _official_gather_path(m, x), atol=1e-4, rtol=1e-4)

    def ours_fwd() -> None:
        with torch.no_grad():
            m(x.reshape(b, hh * ww, c), size=(hh, ww))

    def official_fwd() -> None:
        with torch.no_grad():
            _official_gather_path(m, x)

    xg = x.clone().requires_grad_(True)

    def ours_bwd() -> None:
        m(xg.reshape(b, hh * ww, c), size=(hh, ww)).sum().backward()

    def official_bwd() -> None:
        _official_gather_path(m, xg).sum().backward()

    assert peak_bytes(ours_fwd) <= peak_bytes(official_fwd)
    assert peak_bytes(ours_bwd) <= peak_bytes(official_bwd)
