"""``torch.export`` and ONNX export of attnzoo mechanisms.

Usage::

    import torch
    import attnzoo
    from attnzoo.inputs import example_inputs
    from attnzoo.integrations import export

    attn = attnzoo.create("mhsa", dim=64, num_heads=4).eval()
    program = export.export_program(attn)                   # torch.export.ExportedProgram
    y = program.module()(torch.randn(3, 50, 64))            # another batch and sequence length
    path = export.export_onnx(attn, "mhsa.onnx")            # torch.onnx.export(..., dynamo=True)
    outputs = export.run_onnx(path, example_inputs(attn))   # onnxruntime: a list of numpy arrays

The example inputs default to :func:`attnzoo.inputs.example_inputs`. With ``dynamic=True`` (the
default) the program accepts other sizes along the axes of :func:`dynamic_axes`:

* the batch of every tensor input, always;
* the size axes of the family contract: the tokens ``N`` of a sequence token mixer and of pooling,
  the queries ``N`` and context tokens ``M`` of cross-attention, the spatial axes of a feature map,
  and those of a gate's ``x`` and ``g`` (:func:`contract_axes`); unless the card declares them
  fixed (``conformance={"skip": {"export_dynamic_size": reason}}``) or ``variable_size=False``
  (:func:`fixed_size_reason`).

The grid of a 2-D/3-D token mixer (``size=(H, W)``) and every other non-tensor input are Python
values, fixed when the program is traced. Mechanism-specific tensor inputs (a region map, a
query, other pyramid levels) are dynamic in their batch only. An axis of size 1 in the example
stays fixed: torch.export specialises sizes 0 and 1. A program accepts the sizes its guards
allow, which it checks when called (e.g. ``N > block_size`` when the traced example had more than
one block): trace with an example of the size class you will run.

Value checks (NaN/Inf inputs, all-masked rows) do not run in an exported program, see
:func:`attnzoo.checks.tracing`. An ONNX model checks no guards at all. A mechanism whose card
declares ``skip: {"export": reason}`` or ``{"onnx": reason}`` is still attempted; when it fails,
the :class:`~attnzoo.integrations.IntegrationError` names the mechanism, the card's reason and
the torch error.

torch 2.14 cannot build the guard check of a program whose tensor inputs pass through a
``**kwargs`` of ``forward`` (the mechanism-specific inputs above): ``program.module()`` then
raises ``NameError: name 'L' is not defined`` when called. Call
``program.module(check_guards=False)``, which still checks the input shapes against the program's
ranges and equalities; :func:`export_onnx` exports that module.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.utils import _pytree as pytree

from attnzoo.inputs import Example, example_inputs
from attnzoo.integrations import IntegrationError
from attnzoo.registry import Card

__all__ = [
    "contract_axes",
    "dynamic_axes",
    "dynamic_dims",
    "export_onnx",
    "export_program",
    "fixed_size_reason",
    "run_onnx",
    "skip_reason",
]

_AXES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def skip_reason(card: Card, target: str) -> str | None:
    """The reason ``card`` declares why ``target`` (``"export"``, ``"onnx"`` or
    ``"export_dynamic_size"``) does not work, or ``None`` when it does."""
    return card.conformance.get("skip", {}).get(target)


def _card(module: object) -> Card:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an attnzoo mechanism (nn.Module), got {type(module).__name__}")
    card = getattr(module, "card", None)
    if not isinstance(card, Card):
        raise TypeError(
            f"module must be a registered attnzoo mechanism (built by attnzoo.create), got "
            f"{type(module).__name__}, which has no card"
        )
    return card


def _example(module: nn.Module, example: object) -> Example:
    if example is None:
        return example_inputs(module)
    if not isinstance(example, Example):
        raise TypeError(
            f"example must be an attnzoo.inputs.Example (see attnzoo.inputs.example_inputs), "
            f"got {type(example).__name__}"
        )
    return example


def _spatial(nd: int, prefix: str = "") -> dict[int, str]:
    return {2 + i: prefix + name for i, name in enumerate(_AXES[nd])}


def contract_axes(module: nn.Module) -> dict[str, dict[int, str]]:
    """The size axes of the family contract, per ``forward`` argument, as ``{axis: label}`` (e.g.
    ``{"x": {1: "N"}}``), whatever the card declares; see :func:`dynamic_axes`."""
    card = _card(module)
    family, nd = card.family, card.spatial_dims
    if family == "token_mixer":
        return {"x": {1: "N"}} if nd <= 1 else {}
    if family == "pooling":
        return {"x": {1: "N"}, "mask": {1: "N"}}
    if family == "cross_attention":
        if getattr(module, "context_spatial_dims", 0) >= 2:
            return {"x": {1: "N"}}
        return {"x": {1: "N"}, "context": {1: "M"}, "mask": {1: "M"}}
    if family == "feature_map":
        return {"x": _spatial(nd)}
    return {"x": _spatial(nd), "g": _spatial(nd, "g ")}


def fixed_size_reason(card: Card) -> str | None:
    """Why the card fixes the size axes of :func:`contract_axes` at export, or ``None``."""
    if not card.variable_size:
        return "the module is built for one input size"
    return skip_reason(card, "export_dynamic_size")


def dynamic_axes(module: nn.Module) -> dict[str, dict[int, str]]:
    """The size axes that ``dynamic=True`` makes dynamic besides the batch: those of
    :func:`contract_axes`, or none when :func:`fixed_size_reason` gives a reason."""
    return {} if fixed_size_reason(_card(module)) else contract_axes(module)


def _signature(module: nn.Module) -> tuple[list[str], str | None]:
    """Names of ``forward``'s named parameters, and of its ``**kwargs`` (or ``None``)."""
    params = inspect.signature(module.forward).parameters.values()
    named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return named, next((p.name for p in params if p.kind == p.VAR_KEYWORD), None)


def dynamic_dims(
    module: nn.Module, example: Example | None = None, *, axes: dict[str, dict[int, str]] | None = None
) -> dict[str, Any]:
    """The ``dynamic_shapes`` :func:`export_program` passes to ``torch.export.export``.

    Keyed by the names of ``module.forward``'s arguments (the mechanism-specific keyword inputs
    under the name of its ``**kwargs``); each tensor maps its batch and its ``axes`` (default
    :func:`dynamic_axes`) to ``Dim.DYNAMIC`` (torch.export infers which inputs share a size).
    """
    card = _card(module)
    example = _example(module, example)
    axes = dynamic_axes(module) if axes is None else axes

    def spec(value: Any, dims: dict[int, str]) -> Any:
        if isinstance(value, torch.Tensor):
            return {a: Dim.DYNAMIC for a in (0, *dims) if a < value.dim() and value.shape[a] > 1}
        if isinstance(value, (tuple, list)):
            return type(value)(spec(v, {}) for v in value)
        return None

    named, var_kw = _signature(module)
    shapes: dict[str, Any] = {
        name: spec(value, axes.get(name, {})) for name, value in zip(named, example.args)
    }
    for name, value in example.kwargs.items():
        if name in named:
            shapes[name] = spec(value, axes.get(name, {}))
        elif var_kw is not None:
            shapes.setdefault(var_kw, {})[name] = spec(value, {})
        else:
            raise IntegrationError(f"example passes {name!r}, which {card.name}.forward does not take")
    return shapes


Dynamic = bool | Mapping[str, Mapping[int, str]]


def _shapes(module: nn.Module, example: Example, dynamic: Dynamic) -> dict[str, Any] | None:
    if isinstance(dynamic, bool):
        return dynamic_dims(module, example) if dynamic else None
    if not isinstance(dynamic, Mapping):
        raise TypeError(
            f"dynamic must be a bool or {{argument: {{axis: label}}}}, got {type(dynamic).__name__}"
        )
    named, _ = _signature(module)
    for name, axes in dynamic.items():
        if name not in named:
            raise IntegrationError(f"dynamic names {name!r}, which is not an argument of forward {named}")
        if not isinstance(axes, Mapping) or not all(isinstance(a, int) and a >= 1 for a in axes):
            raise IntegrationError(f"dynamic[{name!r}] must map axes >= 1 to labels, got {axes!r}")
    return dynamic_dims(module, example, axes={k: dict(v) for k, v in dynamic.items()})


def _failure(card: Card, what: str, target: str, error: BaseException, dynamic: Dynamic) -> IntegrationError:
    declared = skip_reason(card, target)
    if declared is None and isinstance(dynamic, Mapping):  # sizes made dynamic on request
        declared = fixed_size_reason(card)
    why = f"its card declares: {declared}" if declared else "its card declares no reason; please report it"
    hint = " Export with dynamic=False for fixed shapes." if dynamic is not False else ""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return IntegrationError(
        f"{what} cannot export {card.name!r} ({why}).{hint} {type(error).__name__}: {first}"
    )


def export_program(
    module: nn.Module, example: Example | None = None, *, dynamic: Dynamic = True
) -> ExportedProgram:
    """Export an attnzoo mechanism with ``torch.export.export`` (non-strict).

    Args:
        module: a registered mechanism (from :func:`attnzoo.create`), in the mode (``eval()`` or
            ``train()``) the program should run in.
        example: the inputs to trace with; default :func:`attnzoo.inputs.example_inputs`.
        dynamic: ``True`` makes the batch and the axes of :func:`dynamic_axes` dynamic (see
            :func:`dynamic_dims`); ``False`` fixes every shape; ``{argument: {axis: label}}``
            makes the batch and these axes dynamic (e.g. ``contract_axes(module)``).

    The module runs once on the example first, so that attnzoo's input checks (which do not run
    while torch traces) reject a bad example with their message.

    Returns:
        The program; ``program.module()(*example.args, **example.kwargs)`` returns what ``module``
        returns.

    Raises:
        TypeError: ``module`` is not an attnzoo mechanism or ``example`` not an ``Example``, or the
            example has a wrong type for the module.
        IntegrationError: the example does not fit the module, or torch cannot export it.
    """
    card = _card(module)
    example = _example(module, example)
    try:
        with torch.no_grad():
            module(*example.args, **example.kwargs)
    except TypeError as error:
        raise TypeError(f"the example does not fit {card.name!r}: {error}") from error
    except ValueError as error:
        raise IntegrationError(f"the example does not fit {card.name!r}: {error}") from error
    shapes = _shapes(module, example, dynamic)
    try:
        return torch.export.export(module, example.args, example.kwargs, dynamic_shapes=shapes)
    except Exception as error:
        raise _failure(card, "torch.export", "export", error, dynamic) from error


@contextmanager
def _without_parameter_grads(module: nn.Module) -> Iterator[None]:
    """Trace an inference graph: ``requires_grad`` off for the parameters, restored afterwards."""
    grads = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)


def export_onnx(
    module: nn.Module,
    path: str | os.PathLike[str],
    example: Example | None = None,
    *,
    dynamic: Dynamic = True,
) -> Path:
    """Export an attnzoo mechanism to an ONNX file with ``torch.onnx.export(..., dynamo=True)``.

    The program of :func:`export_program` (same ``example`` and ``dynamic``) is exported through
    ``program.module(check_guards=False)`` (see the module docstring), with the same dynamic axes.
    It is traced as an inference graph, with ``requires_grad`` off for the parameters while it is
    traced (a learned float mask that requires grad makes torch 2.14 decompose SDPA into another
    memory layout than it traced, and the ONNX conversion fails).
    The ONNX inputs are the tensors of ``example`` in order (positional, then keyword); non-tensor
    inputs (e.g. ``size``) are fixed. Returns ``path``.
    """
    card = _card(module)
    path = Path(path)
    if path.suffix != ".onnx":
        raise IntegrationError(f"path must end in .onnx, got {str(path)!r}")
    if not path.parent.is_dir():
        raise IntegrationError(f"path {str(path)!r}: its folder does not exist")
    example = _example(module, example)
    shapes = _shapes(module, example, dynamic)
    _, var_kw = _signature(module)
    if shapes is not None and var_kw is not None:  # the unlifted module names the **kwargs inputs
        shapes.update(shapes.pop(var_kw, {}))
    with _without_parameter_grads(module), warnings.catch_warnings():
        # the unlifted module reports training mode whatever mode the program was traced in
        warnings.filterwarnings("ignore", "Exporting a model while it is in training mode")
        program = export_program(module, example, dynamic=dynamic)
        try:
            onnx_program = torch.onnx.export(
                program.module(check_guards=False),
                example.args,
                kwargs=example.kwargs,
                dynamic_shapes=shapes,
                dynamo=True,
                verbose=False,
            )
        except Exception as error:
            raise _failure(card, "torch.onnx.export", "onnx", error, dynamic) from error
    onnx_program.save(str(path))
    return path


def run_onnx(path: str | os.PathLike[str], example: Example) -> list[np.ndarray]:
    """Run an ONNX file of :func:`export_onnx` with onnxruntime (CPU) on the tensors of ``example``.

    The tensors are matched to the model's inputs by position, so pass them in the order (and
    with the keyword names) the model was exported with. Returns the outputs as numpy arrays, in
    the order of the module's outputs.
    """
    import onnxruntime

    if not isinstance(example, Example):
        raise TypeError(f"example must be an attnzoo.inputs.Example, got {type(example).__name__}")
    path = Path(path)
    if not path.is_file():
        raise IntegrationError(f"path {str(path)!r} is not a file (write it with export_onnx)")
    leaves = pytree.tree_leaves((example.args, example.kwargs))
    tensors = [t.detach().cpu().numpy() for t in leaves if isinstance(t, torch.Tensor)]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != len(tensors):
        raise IntegrationError(
            f"example has {len(tensors)} tensor(s) but {path.name} takes {len(inputs)} "
            f"({', '.join(i.name for i in inputs)}): pass inputs like those it was exported with"
        )
    return session.run(None, {i.name: t for i, t in zip(inputs, tensors)})
