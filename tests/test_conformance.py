"""Conformance suite generated from the cards: every registered mechanism is checked against its
family contract by registering it. Per-mechanism overrides come from ``card.conformance``
(``sizes``, ``skip: {check: reason}``); a skipped check is reported with its reason."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo.inputs import Example, default_size, example_inputs
from attnzoo.integrations import IntegrationError
from attnzoo.integrations.export import (
    contract_axes,
    dynamic_axes,
    export_onnx,
    export_program,
    fixed_size_reason,
    run_onnx,
    skip_reason,
)
from attnzoo.registry import Card

NAMES = attnzoo.list_mechanisms()


def _card(name: str) -> Card:
    return attnzoo.card(name)


def _skip_if(card: Card, check: str) -> None:
    reason = card.conformance.get("skip", {}).get(check)
    if reason:
        pytest.skip(f"{card.name}: {check} skipped: {reason}")


def _build(card: Card, dtype: torch.dtype = torch.float32, **override: Any) -> nn.Module:
    torch.manual_seed(0)
    module = attnzoo.create(card.name, **{**card.tiny, **override})
    return module.to(dtype).eval()


def _sizes(card: Card) -> list[tuple[int, ...]]:
    sizes = card.conformance.get("sizes")
    if sizes:
        return [tuple(s) for s in sizes]
    return {0: [(7,), (3,)], 1: [(7,), (13,)], 2: [(5, 7), (4, 4)], 3: [(3, 4, 5)]}[card.spatial_dims]


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    raise TypeError(f"unexpected output type {type(out).__name__}")


def _inputs(module: nn.Module, **kw: Any) -> Example:
    gen = torch.Generator().manual_seed(1)
    return example_inputs(module, generator=gen, **kw)


def _batch_slice(value: Any, sl: slice) -> Any:
    """Slice the batch of a tensor input, or of each tensor in a tuple/list input."""
    if isinstance(value, torch.Tensor):
        return value[sl]
    if isinstance(value, (tuple, list)):
        return type(value)(_batch_slice(v, sl) for v in value)
    return value


def _sliced(ex: Example, sl: slice) -> Example:
    return Example(
        tuple(_batch_slice(a, sl) for a in ex.args), {k: _batch_slice(v, sl) for k, v in ex.kwargs.items()}
    )


def _run(module: nn.Module, ex: Example) -> list[torch.Tensor]:
    return _outputs(module(*ex.args, **ex.kwargs))


def _expected_shape(card: Card, module: nn.Module, ex: Example) -> tuple[int, ...] | None:
    if card.family == "pooling":
        return None
    return tuple(ex.args[0].shape)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"]
)
def test_shape_and_dtype(name: str, dtype: torch.dtype) -> None:
    card = _card(name)
    if dtype == torch.bfloat16:
        _skip_if(card, "bf16")
    module = _build(card, dtype)
    ex = _inputs(module, dtype=dtype, batch=1 if dtype == torch.bfloat16 else 2)
    outs = _run(module, ex)
    want = _expected_shape(card, module, ex)
    if want is not None:
        assert tuple(outs[0].shape) == want
    if card.family == "pooling":
        assert outs[0].shape[0] == ex.args[0].shape[0] and outs[0].dim() == 2
        assert outs[1].shape[0] == ex.args[0].shape[0] and outs[1].shape[-1] == ex.args[0].shape[1]
    for out in outs:
        if out.is_floating_point():
            assert out.dtype == dtype, f"{name} returned {out.dtype} for {dtype} input"
            assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_sizes_and_batch_one(name: str) -> None:
    card = _card(name)
    module = _build(card, torch.float64)
    for size in _sizes(card):
        for batch in (1, 3):
            ex = _inputs(module, size=size, batch=batch, dtype=torch.float64)
            outs = _run(module, ex)
            want = _expected_shape(card, module, ex)
            if want is not None:
                assert tuple(outs[0].shape) == want, f"size={size} batch={batch}"
            assert all(torch.isfinite(o).all() for o in outs if o.is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name: str) -> None:
    """Each sample's output depends on that sample only (batch 3 == three batches of 1)."""
    card = _card(name)
    _skip_if(card, "batch_independence")
    module = _build(card, torch.float64)
    ex = _inputs(module, batch=3, dtype=torch.float64)
    full = _run(module, ex)
    for i in range(3):
        for a, b in zip(_run(module, _sliced(ex, slice(i, i + 1))), full):
            torch.testing.assert_close(a, b[i : i + 1], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_parameters_and_inputs(name: str) -> None:
    card = _card(name)
    module = _build(card, torch.float64).train()
    ex = _inputs(module, dtype=torch.float64)
    for t in ex.tensors():
        t.requires_grad_(True)
    outs = _run(module, ex)
    sum(o.sum() for o in outs if o.is_floating_point()).backward()
    unused = set(card.conformance.get("unused_params", ()))
    missing = [
        n for n, p in module.named_parameters() if p.requires_grad and p.grad is None and n not in unused
    ]
    assert not missing, f"no gradient reached {missing}"
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in ex.tensors())


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name: str) -> None:
    card = _card(name)
    _skip_if(card, "gradcheck")
    module = _build(card, torch.float64)
    ex = _inputs(module, batch=1, dtype=torch.float64)
    floats = ex.tensors()
    for t in floats:
        t.requires_grad_(True)

    def fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(tensors)
        args = tuple(
            next(it) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in ex.args
        )
        kwargs = {
            k: next(it) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in ex.kwargs.items()
        }
        return tuple(o for o in _outputs(module(*args, **kwargs)) if o.is_floating_point())

    assert torch.autograd.gradcheck(fn, tuple(floats), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    card = _card(name)
    module = _build(card)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.manual_seed(123)
    fresh = attnzoo.create(card.name, **card.tiny).eval()
    fresh.load_state_dict(copy.deepcopy(module.state_dict()))
    ex = _inputs(module)
    for a, b in zip(_run(module, ex), _run(fresh, ex)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_in_eval(name: str) -> None:
    card = _card(name)
    module = _build(card)
    ex = _inputs(module)
    for a, b in zip(_run(module, ex), _run(module, ex)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n in NAMES if attnzoo.card(n).causal])
def test_causality(name: str) -> None:
    """Changing token t leaves the outputs of tokens < t unchanged."""
    card = _card(name)
    module = _build(card, torch.float64, causal=True)
    size = max(_sizes(card), key=lambda s: s[0])
    ex = _inputs(module, size=size, dtype=torch.float64)
    base = _run(module, ex)[0]
    n = ex.args[0].shape[1]
    for t in (n // 2, n - 1):
        x2 = ex.args[0].clone()
        x2[:, t:] += torch.randn_like(x2[:, t:])
        out = module(x2, *ex.args[1:], **ex.kwargs)
        out = _outputs(out)[0]
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-10, rtol=1e-8)
        assert not torch.allclose(out[:, t:], base[:, t:])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_compile_matches_eager(name: str) -> None:
    card = _card(name)
    _skip_if(card, "compile")
    module = _build(card)
    ex = _inputs(module)
    torch._dynamo.reset()
    compiled = torch.compile(module)
    with torch.no_grad():
        for a, b in zip(_run(compiled, ex), _run(module, ex)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- export


def _export_examples(card: Card, module: nn.Module) -> list[Example]:
    """The example a program is traced with, then other batches, and another size when the
    mechanism's sizes are dynamic (grown: a program covers the size class it was traced in)."""
    size = default_size(card)
    other = tuple(2 * s + 1 for s in size) if dynamic_axes(module) else size
    gen = torch.Generator().manual_seed(2)
    return [
        _inputs(module),
        example_inputs(module, batch=3, size=other, generator=gen),
        example_inputs(module, batch=1, size=size, generator=gen),
    ]


def _program_module(program: torch.export.ExportedProgram, module: nn.Module, ex: Example) -> nn.Module:
    # torch 2.14 cannot build the guard check for inputs passed through **kwargs (see export.py)
    named = inspect.signature(module.forward).parameters
    return program.module(check_guards=all(k in named for k in ex.kwargs))


@pytest.mark.parametrize("name", NAMES)
def test_export_matches_eager(name: str) -> None:
    """The torch.export program equals eager on its example, on other batches and (with dynamic
    sizes) on another size; a declared failure must still fail."""
    card = _card(name)
    module = _build(card)
    examples = _export_examples(card, module)
    if skip_reason(card, "export"):
        with pytest.raises(IntegrationError, match=card.name):
            export_program(module, examples[0])
        return
    program = export_program(module, examples[0])
    run = _program_module(program, module, examples[0])
    with torch.no_grad():
        for ex in examples:
            for a, b in zip(_outputs(run(*ex.args, **ex.kwargs)), _run(module, ex), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [n for n in NAMES if fixed_size_reason(attnzoo.card(n)) and not skip_reason(attnzoo.card(n), "export")],
)
def test_export_fixed_sizes_are_needed(name: str) -> None:
    """A card that fixes the sizes at export is right: with them dynamic, torch.export fails or
    the program rejects another size."""
    card = _card(name)
    module = _build(card)
    axes = contract_axes(module)
    assert axes, f"{name} declares fixed sizes but its family contract has no size axis"
    try:
        program = export_program(module, _inputs(module), dynamic=axes)
    except IntegrationError as error:
        assert card.name in str(error)
        return
    other = example_inputs(module, size=tuple(2 * s + 1 for s in default_size(card)))
    with pytest.raises(AssertionError, match="Guard failed"):
        _program_module(program, module, other)(*other.args, **other.kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_onnx_matches_eager(name: str, tmp_path: Path) -> None:
    """The ONNX model run by onnxruntime equals eager (float32, 1e-4) on its example and on the
    other batches and sizes; a declared failure must still fail."""
    card = _card(name)
    module = _build(card)
    examples = _export_examples(card, module)
    path = tmp_path / f"{name}.onnx"
    if skip_reason(card, "export") or skip_reason(card, "onnx"):
        with pytest.raises(IntegrationError, match=card.name):
            export_onnx(module, path, examples[0])
        return
    export_onnx(module, path, examples[0])
    with torch.no_grad():
        for ex in examples:
            for a, b in zip(run_onnx(path, ex), _run(module, ex), strict=True):
                torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- bad input


def _expect_error(
    fn: Callable[[], Any], exc: type[Exception] | tuple[type[Exception], ...], word: str
) -> None:
    with pytest.raises(exc) as info:
        fn()
    assert word in str(info.value), f"error does not name {word!r}: {info.value}"


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_wrong_rank(name: str) -> None:
    card = _card(name)
    module = _build(card)
    ex = _inputs(module)
    x = ex.args[0]
    _expect_error(lambda: module(x[0], *ex.args[1:], **ex.kwargs), ValueError, "x")
    _expect_error(lambda: module(x.unsqueeze(0), *ex.args[1:], **ex.kwargs), ValueError, "x")


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_wrong_channels(name: str) -> None:
    card = _card(name)
    module = _build(card)
    ex = _inputs(module)
    x = ex.args[0]
    axis = 1 if card.family in ("feature_map", "gate") else 2
    extra = torch.cat([x, x.narrow(axis, 0, 1)], dim=axis)
    _expect_error(lambda: module(extra, *ex.args[1:], **ex.kwargs), ValueError, "x")


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_empty_batch(name: str) -> None:
    card = _card(name)
    module = _build(card)
    empty = _sliced(_inputs(module), slice(0, 0))
    _expect_error(lambda: module(*empty.args, **empty.kwargs), ValueError, "empty")


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_not_floating(name: str) -> None:
    card = _card(name)
    module = _build(card)
    ex = _inputs(module)
    _expect_error(lambda: module(ex.args[0].long(), *ex.args[1:], **ex.kwargs), TypeError, "x")


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_nan(name: str) -> None:
    card = _card(name)
    module = _build(card)
    ex = _inputs(module)
    x = ex.args[0].clone()
    x.view(-1)[0] = float("nan")
    _expect_error(lambda: module(x, *ex.args[1:], **ex.kwargs), ValueError, "NaN")


@pytest.mark.parametrize("name", [n for n in NAMES if attnzoo.card(n).family == "token_mixer"])
def test_bad_input_size_mismatch(name: str) -> None:
    card = _card(name)
    module = _build(card)
    ex = _inputs(module)
    size = default_size(card)
    if card.spatial_dims >= 2:
        wrong = (size[0] + 1, *size[1:])
        _expect_error(lambda: module(*ex.args, **{**ex.kwargs, "size": wrong}), ValueError, "size")
        kwargs = {k: v for k, v in ex.kwargs.items() if k != "size"}
        _expect_error(lambda: module(*ex.args, **kwargs), ValueError, "size")
    else:
        _expect_error(lambda: module(*ex.args, **{**ex.kwargs, "size": (size[0] + 1,)}), ValueError, "size")


@pytest.mark.parametrize("name", [n for n in NAMES if {"dim", "num_heads"} <= set(attnzoo.card(n).tiny)])
def test_bad_config_heads_not_dividing_dim(name: str) -> None:
    card = _card(name)
    _skip_if(card, "heads_divide_dim")
    dim = int(card.tiny["dim"])
    heads = int(card.tiny["num_heads"])
    bad = next(d for d in range(dim + 1, dim + 2 * heads + 2) if d % heads)
    _expect_error(lambda: attnzoo.create(name, **{**card.tiny, "dim": bad}), ValueError, "num_heads")
