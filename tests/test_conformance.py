"""Conformance suite generated from the cards: every registered mechanism is checked against its
family contract by registering it. Per-mechanism overrides come from ``card.conformance``
(``sizes``, ``skip: {check: reason}``, ``unused_params``, ``zero_grad_ok: {parameter or submodule:
reason}``, ``gradcheck_perturb: {parameter or submodule: reason}`` for parameters whose initial value
sits on a kink of the function, moved off it before gradcheck); a skipped check is reported with its
reason.

Low-precision runs are compared with a float64 run of the same module (the same rounded parameters
and inputs, so only the arithmetic differs) normwise, ``max|y - y64| <= k u max|y64|`` with ``u`` the
dtype's unit roundoff (``eps / 2``): an element-wise relative test would fail wherever an output is a
small difference of larger terms, which is rounding, not a bug. ``k`` is set by how rounding builds
up in these small modules: ~10 rounded ops in a chain (projections, scores, softmax, weighting,
output projection) for bfloat16, whose matmuls accumulate in float32 (every mechanism measured
<= 2.8u: ``k = 8``); in float32 the sums themselves round, adding ~sqrt(K) u for K-term dot products
(K <= ~100 here; measured <= 4.5u: ``k = 32``)."""

from __future__ import annotations

import copy
import functools
import inspect
import os
import subprocess
import sys
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


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors of an input (or of each tensor in a tuple/list input) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _cast_example(ex: Example, dtype: torch.dtype) -> Example:
    return Example(
        tuple(_cast(a, dtype) for a in ex.args), {k: _cast(v, dtype) for k, v in ex.kwargs.items()}
    )


#: normwise tolerance factors k (module docstring): max|y - y64| <= k * u * max|y64|
_NORMWISE_K = {torch.bfloat16: 8, torch.float32: 32}


def _assert_normwise_close(
    low: list[torch.Tensor], ref: list[torch.Tensor], dtype: torch.dtype, what: str
) -> None:
    u = torch.finfo(dtype).eps / 2
    for i, (a, b) in enumerate(zip(low, ref, strict=True)):
        if not b.is_floating_point():
            assert torch.equal(a, b), f"{what}: integer output {i} differs"
            continue
        err = float((a.detach().double() - b.detach()).abs().max()) if b.numel() else 0.0
        scale = float(b.detach().abs().max()) if b.numel() else 0.0
        assert err <= _NORMWISE_K[dtype] * u * scale, (
            f"{what}: output {i} max|y - y64| = {err:.3g} > {_NORMWISE_K[dtype]} u max|y64| "
            f"= {_NORMWISE_K[dtype] * u * scale:.3g} ({err / max(u * scale, 1e-300):.1f} u)"
        )


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
    ref = copy.deepcopy(module).double()  # before the forward, which may store non-leaf tensors
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
    if dtype == torch.bfloat16:
        _assert_normwise_close(
            outs, _run(ref, _cast_example(ex, torch.float64)), dtype, f"{name} bf16 vs fp64"
        )


@pytest.mark.parametrize("name", NAMES)
def test_sizes_batch_independence_and_fp32(name: str) -> None:
    """At every conformance size (odd ones included): the output has the contract's shape and is
    finite; each sample's output depends on that sample only (batch 3 == three batches of 1,
    unless the card skips ``batch_independence``); and float32 agrees with float64 normwise."""
    card = _card(name)
    module = _build(card, torch.float64)
    low_module = copy.deepcopy(module).float()
    single = "batch_independence" not in card.conformance.get("skip", {})
    for size in _sizes(card):
        ex = _inputs(module, size=size, batch=3, dtype=torch.float64)
        outs = _run(module, ex)
        want = _expected_shape(card, module, ex)
        if want is not None:
            assert tuple(outs[0].shape) == want, f"size={size}"
        assert all(torch.isfinite(o).all() for o in outs if o.is_floating_point()), f"size={size}"
        for i in range(3 if single else 0):
            for a, b in zip(_run(module, _sliced(ex, slice(i, i + 1))), outs, strict=True):
                torch.testing.assert_close(
                    a, b[i : i + 1], atol=1e-10, rtol=1e-8, msg=f"size={size} sample {i}"
                )
        low = _run(low_module, _cast_example(ex, torch.float32))
        _assert_normwise_close(low, outs, torch.float32, f"{name} size={size} fp32 vs fp64")


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_parameters_and_inputs(name: str) -> None:
    card = _card(name)
    module = _build(card, torch.float64).train()
    ex = _inputs(module, dtype=torch.float64)
    for t in ex.tensors():
        t.requires_grad_(True)
    outs = [o for o in _run(module, ex) if o.is_floating_point()]
    # random weights: a plain sum has structurally zero gradients (softmax weights sum to 1, a
    # normalised output sums to a constant), which would hide a parameter the output ignores
    gen = torch.Generator().manual_seed(7)
    sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs).backward()
    unused = set(card.conformance.get("unused_params", ()))
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad and n not in unused]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in params), "non-finite parameter gradient"
    zero = [n for n, p in params if not bool(p.grad.any()) and not _zero_grad_ok(card, n)]
    assert not zero, f"all-zero gradient on {zero} (declare structural zeros in conformance['zero_grad_ok'])"
    for i, t in enumerate(ex.tensors()):
        assert t.grad is not None and torch.isfinite(t.grad).all(), f"input {i}: no finite gradient"
        assert bool(t.grad.any()), f"input {i}: all-zero gradient"


def _zero_grad_ok(card: Card, param: str) -> bool:
    """Whether the card declares ``param`` (by its name or a submodule's) structurally zero at init."""
    return any(
        param == key or param.startswith(key + ".") for key in card.conformance.get("zero_grad_ok", {})
    )


_DECLARED = [
    (n, key)
    for n in NAMES
    for key in ("zero_grad_ok", "gradcheck_perturb")
    if attnzoo.card(n).conformance.get(key)
]


@pytest.mark.parametrize(("name", "key"), _DECLARED)
def test_parameter_declarations_name_parameters_with_reasons(name: str, key: str) -> None:
    card = _card(name)
    params = [n for n, _ in attnzoo.create(name, **card.tiny).named_parameters()]
    for prefix, reason in card.conformance[key].items():
        assert isinstance(reason, str) and reason.strip(), f"{prefix}: no reason"
        assert any(n == prefix or n.startswith(prefix + ".") for n in params), f"{prefix} names no parameter"


def _odd_size(card: Card) -> tuple[int, ...]:
    """The first conformance size whose sides are all odd, else the smallest with each even side
    made one smaller."""
    sizes = _sizes(card)
    odd = [s for s in sizes if all(v % 2 for v in s)]
    if odd:
        return odd[0]
    return tuple(v - 1 if v % 2 == 0 else v for v in min(sizes, key=lambda s: torch.Size(s).numel()))


def _gradcheck_fn(
    module: nn.Module, ex: Example, names: list[str]
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``fn(*floating inputs, *parameters named by names)`` -> the module's floating outputs."""
    n_in = len(ex.tensors())

    def fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(tensors[:n_in])
        args = tuple(
            next(it) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in ex.args
        )
        kwargs = {
            k: next(it) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in ex.kwargs.items()
        }
        params = dict(zip(names, tensors[n_in:], strict=True))
        out = torch.func.functional_call(module, params, args, kwargs)
        return tuple(o for o in _outputs(out) if o.is_floating_point())

    return fn


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name: str) -> None:
    """Analytical against finite-difference gradients in float64: the full Jacobian with respect to
    the inputs at an odd size, and random projections (fast mode) with respect to the inputs and
    every parameter at each conformance size."""
    card = _card(name)
    _skip_if(card, "gradcheck")
    module = _build(card, torch.float64)
    unused = set(card.conformance.get("unused_params", ()))
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad and n not in unused]
    names = [n for n, _ in named]
    perturb = card.conformance.get("gradcheck_perturb", {})
    with torch.no_grad():
        for n, p in named:
            if any(n == key or n.startswith(key + ".") for key in perturb):
                p.add_(0.05 * torch.randn_like(p))
    for size, full in [(_odd_size(card), True), *((s, False) for s in _sizes(card))]:
        ex = _inputs(module, size=size, batch=1, dtype=torch.float64)
        floats = [t.requires_grad_(True) for t in ex.tensors()]
        params = [p.detach().clone().requires_grad_(not full) for _, p in named]
        assert torch.autograd.gradcheck(
            _gradcheck_fn(module, ex, names),
            (*floats, *params),
            eps=1e-6,
            atol=1e-5,
            rtol=1e-4,
            fast_mode=not full,
        ), f"size={size} full={full}"


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


_CHILD = """
import importlib.util, sys
import torch
torch.set_num_threads(int(sys.argv[2]))
spec = importlib.util.spec_from_file_location("conformance_child", sys.argv[1])
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
outputs = {}
for name in suite.NAMES:
    module = suite._build(suite._card(name))
    with torch.no_grad():
        outputs[name] = suite._run(module, suite._inputs(module))
torch.save(outputs, sys.argv[3])
"""


@functools.cache
def _other_process_outputs(path: str) -> dict[str, list[torch.Tensor]]:
    """Every mechanism's seeded eval forward (as :func:`test_deterministic_in_eval` runs it), computed
    once in a fresh interpreter with this process's thread count; saved to ``path``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    subprocess.run(
        [sys.executable, "-c", _CHILD, __file__, str(torch.get_num_threads()), path],
        check=True,
        env=env,
        timeout=600,
    )
    return torch.load(path)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_across_processes(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same seeded forward in another interpreter (another hash seed, fresh allocator and
    caches) gives bit-for-bit the outputs of this one."""
    card = _card(name)
    module = _build(card)
    with torch.no_grad():
        here = _run(module, _inputs(module))
    path = tmp_path_factory.getbasetemp() / "conformance_other_process.pt"
    there = _other_process_outputs(str(path))[name]
    assert len(there) == len(here)
    for a, b in zip(here, there):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


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
