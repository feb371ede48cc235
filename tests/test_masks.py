"""Key-padding masks of sequence token mixers (issue 20, part 4): ``forward(x, key_padding_mask=...)``.

Every token mixer whose card declares ``key_padding`` (enumerated from the registry, so a new
mechanism is covered by declaring it) runs a batch of sequences of different lengths padded with
random garbage, and each sequence's kept outputs and input gradients must equal running it alone
without padding (float64, tight tolerance), the parameter gradients the sum of the per-sequence
ones, and the garbage must have no effect at all. Right padding is checked for every such mixer,
left padding for ``"edges"`` and ``"any"``, masks with holes (the kept tokens gathered) for
``"any"``; narrower support and bad masks must be refused with an error naming ``key_padding_mask``,
and so must every mixer that declares no support, with its reason.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo.inputs import example_inputs
from attnzoo.kernels.attention import attention_reference, padding_mask
from attnzoo.kernels.windowed import band_mask, group_mask, grouped_attention, sliding_window_attention
from attnzoo.registry import Card

MIXERS = attnzoo.list_mechanisms(family="token_mixer")
MASKED = [n for n in MIXERS if attnzoo.card(n).key_padding != "none"]
REFUSING = [n for n in MIXERS if attnzoo.card(n).key_padding == "none"]
RESERVED = ("size", "context_size", "batch")
N = 13  # > the key span of the tiny windowed configs, so their blocked kernels run
LENGTHS = (N, 7, 1)
F64 = torch.float64


def _configs(card: Card) -> list[dict[str, Any]]:
    """The tiny configuration and two seeded draws from the card's sweep ranges."""
    configs = [dict(card.tiny)]
    for i in range(2):
        rng = random.Random(f"{card.name}-{i}")
        draw = {k: rng.choice(v) for k, v in card.sweep.items() if k not in RESERVED}
        configs.append({**card.tiny, **draw})
    return configs


CASES = [(name, i) for name in MASKED for i in range(3)]


def _build(name: str, config: int) -> nn.Module:
    torch.manual_seed(config)
    module = attnzoo.create(name, **_configs(attnzoo.card(name))[config], dtype=F64)
    for p in module.parameters():  # off the initial values (zero biases, unit norms) that hide leaks
        p.data.add_(0.1 * torch.randn_like(p))
    return module.eval()


def _masks(kind: str, b: int = len(LENGTHS)) -> torch.Tensor:
    """``(B, N)`` keep masks: ``right``/``left`` padding to the lengths of :data:`LENGTHS`, or
    ``holes``: a seeded random pattern keeping at least one token per row."""
    pos = torch.arange(N)
    lengths = torch.tensor(LENGTHS[:b])[:, None]
    if kind == "right":
        return pos < lengths
    if kind == "left":
        return pos >= N - lengths
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(b, N, generator=gen) < 0.6
    mask[:, 0] = mask[:, 0] | ~mask.any(dim=1)
    return mask


def _padded(mask: torch.Tensor, dim: int, seed: int, nonfinite: bool = False) -> torch.Tensor:
    """Tokens ``(B, N, C)``: unit normal where kept, large garbage where padded (with ``nonfinite``,
    NaN and Inf among it)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*mask.shape, dim, generator=gen, dtype=F64)
    garbage = 50 * torch.randn(*mask.shape, dim, generator=gen, dtype=F64)
    if nonfinite:
        garbage[..., 0], garbage[..., -1] = float("nan"), float("inf")
    return torch.where(mask[..., None], x, garbage)


def _grads(module: nn.Module, x: torch.Tensor, w: torch.Tensor, **kw: Any) -> tuple[torch.Tensor, ...]:
    """Output, ``d sum(w * y) / dx`` and the parameter gradients (zeros for unused parameters)."""
    x = x.detach().requires_grad_(True)
    y = module(x, **kw)
    params = list(module.parameters())
    grads = torch.autograd.grad((w * y).sum(), [x, *params], allow_unused=True)
    zeros = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:])]
    return (y.detach(), grads[0], *zeros)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11, msg=lambda m: f"{what}: {m}")


def _check_padded_batch(module: nn.Module, mask: torch.Tensor) -> None:
    dim = module.dim
    x = _padded(mask, dim, seed=2)
    w = torch.randn(*mask.shape, dim, generator=torch.Generator().manual_seed(3), dtype=F64)
    y, gx, *gp = _grads(module, x, w, key_padding_mask=mask)
    pad = ~mask
    assert torch.equal(y[pad], torch.zeros_like(y[pad])), "padded positions must output zeros"
    assert torch.equal(gx[pad], torch.zeros_like(gx[pad])), "padded garbage must get zero gradient"
    other = torch.where(mask[..., None], x, _padded(mask, dim, seed=4, nonfinite=True))
    for a, b in zip((y, gx, *gp), _grads(module, other, w, key_padding_mask=mask)):
        assert torch.equal(a, b), "other garbage (NaN, Inf) in the padded positions changed the result"
    total = [torch.zeros_like(g) for g in gp]
    for i, keep in enumerate(mask):
        yi, gxi, *gpi = _grads(module, x[i : i + 1, keep], w[i : i + 1, keep])
        _close(y[i, keep], yi[0], f"row {i} outputs")
        _close(gx[i, keep], gxi[0], f"row {i} input gradients")
        total = [t + g for t, g in zip(total, gpi)]
    for (pname, _), a, b in zip(module.named_parameters(), gp, total):
        _close(a, b, f"gradient of {pname}")


@pytest.mark.parametrize("name,config", CASES)
def test_right_padding_gives_each_sequence_its_unpadded_result(name: str, config: int) -> None:
    _check_padded_batch(_build(name, config), _masks("right"))


@pytest.mark.parametrize("name,config", [c for c in CASES if attnzoo.card(c[0]).key_padding != "right"])
def test_left_padding_gives_each_sequence_its_unpadded_result(name: str, config: int) -> None:
    _check_padded_batch(_build(name, config), _masks("left"))


@pytest.mark.parametrize("name,config", [c for c in CASES if attnzoo.card(c[0]).key_padding == "any"])
def test_any_mask_equals_the_gathered_kept_tokens(name: str, config: int) -> None:
    mask = _masks("holes")
    assert (mask.to(torch.int8).diff(dim=1) > 0).any(), "the pattern must have holes"
    _check_padded_batch(_build(name, config), mask)


@pytest.mark.parametrize("name", [n for n in MASKED if attnzoo.card(n).key_padding != "any"])
def test_narrower_support_refuses_other_masks(name: str) -> None:
    module = _build(name, 0)
    kinds = ["holes"] if attnzoo.card(name).key_padding == "edges" else ["holes", "left"]
    for kind in kinds:
        mask = _masks(kind)
        with pytest.raises(ValueError, match=r"key_padding_mask.*needs masks that"):
            module(_padded(mask, module.dim, 0), key_padding_mask=mask)


def _bad_masks(b: int) -> list[tuple[Any, type[Exception]]]:
    right = _masks("right", b)
    empty = right.clone()
    empty[-1] = False
    return [
        (right.tolist(), TypeError),
        (right.float(), TypeError),
        (right.long(), TypeError),
        (right[:, :-1], ValueError),
        (right[:-1], ValueError),
        (right[0], ValueError),
        (right[..., None], ValueError),
        (right.to("meta"), ValueError),
        (empty, ValueError),
    ]


@pytest.mark.parametrize("name", MASKED)
def test_bad_masks_raise_naming_the_argument(name: str) -> None:
    module = _build(name, 0)
    x = _padded(_masks("right"), module.dim, 0)
    for mask, error in _bad_masks(x.shape[0]):
        with pytest.raises(error, match="key_padding_mask"):
            module(x, key_padding_mask=mask)


@pytest.mark.parametrize("name", REFUSING)
def test_mixers_without_support_refuse_masks_with_their_reason(name: str) -> None:
    card = attnzoo.card(name)
    module = attnzoo.create(name, **card.tiny).eval()
    ex = example_inputs(module, batch=2, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(ex.args[0].shape[:2], dtype=torch.bool)
    reason = card.key_padding_note or (
        "spatial grid" if card.spatial_dims != 1 else "declares no key-padding"
    )
    with pytest.raises(ValueError, match="key_padding_mask cannot be honoured") as err:
        module(*ex.args, **ex.kwargs, key_padding_mask=mask)
    assert reason in str(err.value)


def test_nonfinite_kept_tokens_are_still_refused() -> None:
    module = _build("mhsa", 0)
    mask = _masks("right")
    x = _padded(mask, module.dim, 0)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):
        module(x, key_padding_mask=mask)


def test_s2_attention_cyclic_refuses_masks() -> None:
    module = attnzoo.create("s2_attention", dim=8, num_heads=2, group_size=4, num_sink=0, cyclic=True)
    mask = torch.ones(1, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="key_padding_mask cannot be honoured with cyclic=True"):
        module(torch.randn(1, 8, 8), key_padding_mask=mask)


def test_card_key_padding_is_validated() -> None:
    with pytest.raises(ValueError, match="key_padding must be one of"):
        Card(name="x_mixer", family="token_mixer", paper="p", key_padding="left")
    with pytest.raises(ValueError, match="key_padding is for 1-D token mixers"):
        Card(name="x_mixer", family="token_mixer", paper="p", spatial_dims=2, key_padding="any")


@pytest.mark.parametrize("kind", ["right", "left", "holes"])
def test_windowed_kernels_blocked_and_dense_agree_with_padding(kind: str) -> None:
    """The blocked forms honour ``key_padding_mask`` as the dense masked reference does."""
    gen = torch.Generator().manual_seed(0)
    b, h, n, d = 3, 2, 40, 4
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=F64) for _ in range(3))
    keep = (torch.arange(n) < torch.tensor([40, 23, 5])[:, None]) if kind == "right" else None
    keep = (torch.arange(n) >= torch.tensor([0, 17, 35])[:, None]) if kind == "left" else keep
    keep = (torch.rand(b, n, generator=gen) < 0.5) if keep is None else keep
    pad = padding_mask(keep, keep[:, None])
    rows = keep[:, None, :, None]
    for left, right in ((3, 3), (5, 0)):
        ref = attention_reference(q, k, v, mask=band_mask(n, n, left, right) & pad)
        out = sliding_window_attention(q, k, v, left=left, right=right, block_size=4, key_padding_mask=keep)
        _close(out.masked_fill(~rows, 0), ref.masked_fill(~rows, 0), f"sliding window {left}/{right}")
    for offset, sink, causal in ((0, 0, False), (3, 2, True)):
        pattern = group_mask(n, 6, offset=offset, num_sink=sink, causal=causal)
        ref = attention_reference(q, k, v, mask=pattern & pad)
        out = grouped_attention(
            q, k, v, group_size=6, offset=offset, num_sink=sink, causal=causal, key_padding_mask=keep
        )
        _close(out.masked_fill(~rows, 0), ref.masked_fill(~rows, 0), f"grouped {offset}/{sink}/{causal}")


def test_moh_load_balance_loss_counts_the_kept_tokens_only() -> None:
    """MoH routes each token alone, so its load-balance loss over a padded batch equals the loss over
    the kept tokens concatenated into one sequence."""
    module = _build("moh_attention", 0)
    mask = _masks("right")
    x = _padded(mask, module.dim, 0)
    module(x, key_padding_mask=mask)
    padded = module.aux_loss
    module(x[mask][None])
    _close(padded, module.aux_loss, "aux_loss")
