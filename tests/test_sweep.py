"""A random sweep over what each card declares (issue 20, part 6).

For every registered mechanism, hypothesis draws constructor arguments from ``card.sweep`` (on top of
``card.tiny``), a batch size (1 and odd sizes included), a spatial size and a dtype, and checks:

* the drawn module builds, and its forward honours the family's output shape;
* float32 forward and backward (input and parameter gradients) equal the float64 run of the same
  weights at float32 tolerances, and float64 reproduces itself;
* each sample of the batch gives its own result alone (unless the card skips ``batch_independence``);
* a drawn causal module ignores the future.

A second sweep draws one validated constructor argument and a bad value for it: it must raise
``TypeError``/``ValueError`` naming the argument.

The example budget is fixed and derandomized in CI (``ATTNZOO_SWEEP=ci``, the default: 8 examples
per mechanism); ``ATTNZOO_SWEEP=nightly`` draws 60 fresh examples per mechanism.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers import ALLOWED_ZERO, constructor_arguments

import attnzoo
from attnzoo.inputs import Example, example_inputs
from attnzoo.registry import Card

settings.register_profile(
    "ci", max_examples=8, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "nightly", max_examples=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("ATTNZOO_SWEEP", "ci")
NAMES = attnzoo.list_mechanisms()
RESERVED = ("size", "context_size", "batch")


def test_every_card_declares_sweep_ranges() -> None:
    """A mechanism without ranges would be swept at its tiny configuration only."""
    for name in NAMES:
        card = attnzoo.card(name)
        args = {k: v for k, v in card.sweep.items() if k not in RESERVED}
        assert "size" in card.sweep and args, f"{name}: card.sweep needs 'size' and constructor ranges"
        params = attnzoo.mechanism_class(name).__init__.__signature__.parameters  # type: ignore[attr-defined]
        unknown = set(args) - set(params)
        assert not unknown, f"{name}: card.sweep names arguments the constructor lacks: {unknown}"
        assert all(isinstance(v, tuple) and v for v in args.values()), f"{name}: ranges are non-empty tuples"


def _size_strategy(spec: Any, nd: int) -> st.SearchStrategy[tuple[int, ...]]:
    if isinstance(spec, list):
        return st.sampled_from([tuple(s) for s in spec])
    lo, hi = spec
    return st.tuples(*[st.integers(lo, hi)] * max(nd, 1))


@st.composite
def _draws(draw: st.DrawFn, card: Card) -> dict[str, Any]:
    kwargs = dict(card.tiny)
    for key, choices in card.sweep.items():
        if key not in RESERVED:
            kwargs[key] = draw(st.sampled_from(choices))
    draw_ = {
        "kwargs": kwargs,
        "size": draw(_size_strategy(card.sweep["size"], card.spatial_dims)),
        "batch": draw(st.integers(*card.sweep.get("batch", (1, 3)))),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "seed": draw(st.integers(0, 2**16)),
    }
    if "context_size" in card.sweep:
        draw_["context_size"] = draw(_size_strategy(card.sweep["context_size"], 1))
    return draw_


def _floats(ex: Example) -> list[torch.Tensor]:
    return [t for t in ex.tensors() if t.is_floating_point()]


def _map(v: Any, fn: Any) -> Any:
    """``fn`` applied to every tensor of ``v`` (a tensor, or a list/tuple of them, or anything else)."""
    if isinstance(v, torch.Tensor):
        return fn(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_map(item, fn) for item in v)
    return v


def _cast(ex: Example, dtype: torch.dtype) -> Example:
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype) if t.is_floating_point() else t

    return Example(_map(ex.args, cast), {k: _map(v, cast) for k, v in ex.kwargs.items()})


def _outputs(out: Any) -> list[torch.Tensor]:
    items = [out] if isinstance(out, torch.Tensor) else list(out)
    return [o for o in items if isinstance(o, torch.Tensor) and o.is_floating_point()]


def _forward_backward(module: torch.nn.Module, ex: Example, weights: list[torch.Tensor]) -> tuple[list, list]:
    """Outputs, then the gradients of ``sum(w * out)`` w.r.t. the floating inputs and parameters."""
    inputs = _floats(ex)
    for t in inputs:
        t.requires_grad_(True)
    outs = _outputs(module(*ex.args, **ex.kwargs))
    loss = sum((w.to(o.dtype) * o).sum() for w, o in zip(weights, outs))
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [*inputs, *params], allow_unused=True)
    return [o.detach() for o in outs], list(grads)


def _check_shape(card: Card, ex: Example, outs: list[torch.Tensor]) -> None:
    x = ex.args[0]
    if card.family == "pooling":
        assert outs[0].dim() == 2 and outs[0].shape[0] == x.shape[0]
        assert outs[1].shape[0] == x.shape[0] and outs[1].shape[-1] == x.shape[1]
    else:
        assert tuple(outs[0].shape) == tuple(x.shape), f"output {tuple(outs[0].shape)} for x {tuple(x.shape)}"


def _close(got: torch.Tensor, ref: torch.Tensor, what: str, tol: float) -> None:
    """float32 vs float64 at ``tol`` relative to the reference's scale (float32 eps is 1.2e-7; ``tol``
    leaves room for the error growth of a few reductions over tiny shapes)."""
    scale = 1.0 + float(ref.abs().max()) if ref.numel() else 1.0
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", NAMES)
def test_random_configurations_match_float64(name: str) -> None:
    card = attnzoo.card(name)

    @settings(settings.get_profile(PROFILE))
    @given(_draws(card))
    def check(d: dict[str, Any]) -> None:
        torch.manual_seed(d["seed"])
        ref = attnzoo.create(name, **d["kwargs"], dtype=torch.float64).eval()
        module = copy.deepcopy(ref).to(d["dtype"])
        gen = torch.Generator().manual_seed(d["seed"])
        extra = {"context_size": d["context_size"]} if "context_size" in d else {}
        ex64 = example_inputs(
            ref, batch=d["batch"], size=d["size"], dtype=torch.float64, generator=gen, **extra
        )
        with torch.no_grad():
            probe = _outputs(ref(*ex64.args, **ex64.kwargs))
        _check_shape(card, ex64, probe)
        weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in probe]
        outs64, grads64 = _forward_backward(ref, _cast(ex64, torch.float64), weights)
        outs, grads = _forward_backward(module, _cast(ex64, d["dtype"]), weights)
        for got, want in zip(outs, outs64):
            assert got.dtype == d["dtype"] and torch.isfinite(want).all()
            _close(got, want, "output", 2e-3 if d["dtype"] == torch.float32 else 1e-12)
        # a card may declare why float32 gradients need not follow float64 (e.g. sampling on kinks)
        kinked = d["dtype"] == torch.float32 and card.conformance.get("skip", {}).get("sweep_f32_gradients")
        for i, (got, want) in enumerate(zip(grads, grads64)):
            assert (got is None) == (want is None), f"gradient {i} reached one dtype only"
            if want is not None:
                assert torch.isfinite(want).all(), f"gradient {i} is not finite"
                if not kinked:
                    _close(got, want, f"gradient {i}", 5e-3 if d["dtype"] == torch.float32 else 1e-12)
        _check_batch_and_causality(card, ref, ex64, d["kwargs"])

    check()


def _check_batch_and_causality(card: Card, ref: torch.nn.Module, ex: Example, kwargs: dict[str, Any]) -> None:
    ex = _cast(ex, torch.float64)
    with torch.no_grad():
        full = _outputs(ref(*ex.args, **ex.kwargs))
        batch = ex.args[0].shape[0]
        if batch > 1 and "batch_independence" not in card.conformance.get("skip", {}):
            last = slice(batch - 1, batch)
            alone = _outputs(ref(*_slice(ex.args, last), **_slice_kwargs(ex.kwargs, last, batch)))
            for a, b in zip(alone, full):
                torch.testing.assert_close(a, b[last], atol=1e-10, rtol=1e-8)
        if kwargs.get("causal") and card.family == "token_mixer":
            x = ex.args[0]
            n = x.shape[1]
            t = n // 2
            x2 = x.clone()
            x2[:, t:] += torch.randn_like(x2[:, t:])
            out = _outputs(ref(x2, *ex.args[1:], **ex.kwargs))[0]
            torch.testing.assert_close(out[:, :t], full[0][:, :t], atol=1e-10, rtol=1e-8)


def _slice(args: tuple[Any, ...], sl: slice) -> tuple[Any, ...]:
    return tuple(a[sl] if isinstance(a, torch.Tensor) else a for a in args)


def _slice_kwargs(kwargs: dict[str, Any], sl: slice, batch: int) -> dict[str, Any]:
    def cut(t: torch.Tensor) -> torch.Tensor:
        return t[sl] if t.dim() and t.shape[0] == batch else t

    return {k: _map(v, cut) for k, v in kwargs.items()}


BAD: dict[str, list[Any]] = {
    "int": ["8", 2.5, True, -1, 0],
    "bool": [1, "yes", None],
    "rate": [1.0, -0.1, "0.1", False],
    "float": ["1.0", True, float("nan"), float("inf")],
}
ARGUMENTS = constructor_arguments()


@pytest.mark.parametrize("name", NAMES)
def test_random_bad_arguments_are_named(name: str) -> None:
    card = attnzoo.card(name)
    args = [(arg, kind, tokens) for n, arg, kind, tokens in ARGUMENTS if n == name]
    if not args:
        pytest.skip(f"{name} has no validated numeric or bool constructor argument")

    @settings(settings.get_profile(PROFILE))
    @given(st.sampled_from(args).flatmap(lambda a: st.tuples(st.just(a), st.sampled_from(BAD[a[1]]))))
    def check(case: tuple[tuple[str, str, set[str]], Any]) -> None:
        (arg, kind, tokens), value = case
        if kind == "int" and value == 0 and (name, arg) in ALLOWED_ZERO:
            return
        if kind == "int" and value == "8" and "str" in tokens:
            return  # a str-accepting int argument (e.g. k_size="adaptive") is checked by value
        if kind == "float" and value == float("inf") and "None" in tokens:
            return
        with pytest.raises((TypeError, ValueError)) as info:
            attnzoo.create(name, **{**card.tiny, arg: value})
        assert arg in str(info.value), f"{name}({arg}={value!r}) raised without naming it: {info.value}"

    check()
