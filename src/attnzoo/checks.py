"""Input validation shared by every mechanism: clear errors that name the offending argument.

All checks raise :class:`TypeError` for a wrong type or dtype and :class:`ValueError` for a wrong
shape or value, before any computation, so that a bad call never fails deep inside ``torch``.
The finiteness check can be switched off globally (``attnzoo.checks.set_finite_check(False)``)
where its one reduction per call matters. Checks that read tensor *values* (finiteness, signs, an
all-masked row) are skipped while ``torch.compile`` or ``torch.export`` (and so the ONNX exporter)
traces, see :func:`tracing`: a traced graph cannot branch on data, so a compiled or exported
program does not validate values; shapes, ranks and dtypes are still checked at trace time.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "NonFiniteOutputWarning",
    "check_bool",
    "check_divisible",
    "check_factory_device",
    "check_factory_dtype",
    "check_float",
    "check_int",
    "check_rate",
    "check_size",
    "check_tensor",
    "finite_check_enabled",
    "set_finite_check",
    "tracing",
]

_FINITE_CHECK = True


def set_finite_check(enabled: bool) -> None:
    """Turn the NaN/Inf input check of every mechanism on or off (it is on by default)."""
    global _FINITE_CHECK
    _FINITE_CHECK = bool(enabled)


def finite_check_enabled() -> bool:
    """Whether mechanisms reject inputs that contain NaN or Inf."""
    return _FINITE_CHECK


def tracing() -> bool:
    """True while ``torch.compile`` or ``torch.export`` traces; value checks are then skipped."""
    return torch.compiler.is_compiling()


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    floating: bool = True,
    nonempty: bool = True,
    finite: bool = True,
    shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Validate ``x`` and return it.

    Args:
        x: the value to check.
        name: the argument name used in error messages.
        ndim: required rank (or set of accepted ranks).
        floating: require a floating-point dtype.
        nonempty: reject a zero-sized dimension (empty batch, zero tokens).
        finite: reject NaN/Inf values (subject to :func:`set_finite_check`).
        shape: expected sizes per dimension, ``None`` meaning any.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in ranks:
            want = " or ".join(str(r) for r in ranks)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if shape is not None:
        if len(shape) != x.dim():
            raise ValueError(f"{name} must have {len(shape)} dimensions, got shape {tuple(x.shape)}")
        for axis, (want, got) in enumerate(zip(shape, x.shape)):
            if want is not None and want != got:
                raise ValueError(
                    f"{name} has size {got} on dimension {axis}, expected {want} (shape {tuple(x.shape)})"
                )
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if finite and _FINITE_CHECK and x.is_floating_point() and not tracing():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
    return x


class NonFiniteOutputWarning(RuntimeWarning):
    """A mechanism returned NaN/Inf in half precision from finite inputs (an overflow)."""


def check_factory_device(device: object, name: str = "device") -> torch.device | None:
    """``device`` (``None``, a ``str``, an ``int`` index or a :class:`torch.device`) as a
    :class:`torch.device` that can hold tensors here: ``TypeError`` for another type,
    ``ValueError`` for a malformed or unavailable device; both name the argument."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"{name} must be a str, int or torch.device, got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ValueError(f"{name}={device!r} is not a device this machine can use: {exc}") from None
    return dev


def check_factory_dtype(dtype: object, name: str = "dtype") -> torch.dtype | None:
    """``dtype`` if it is ``None`` or a floating :class:`torch.dtype`; ``TypeError`` naming the
    argument otherwise (parameters must be floating)."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.dtype (e.g. torch.float64), got {dtype!r}")
    return dtype


def check_size(size: object, n: int, *, spatial_dims: int, name: str = "size") -> tuple[int, ...]:
    """Validate a spatial ``size`` tuple against a token count ``n`` and return it as a tuple."""
    if size is None:
        raise ValueError(f"{name} is required: pass {name}=(H, W) for a grid of N = H*W tokens")
    if isinstance(size, torch.Size):
        size = tuple(size)
    if not isinstance(size, (tuple, list)) or not all(isinstance(s, int) for s in size):
        raise TypeError(f"{name} must be a tuple of {spatial_dims} ints, got {size!r}")
    if len(size) != spatial_dims:
        raise ValueError(f"{name} must have {spatial_dims} entries, got {tuple(size)}")
    if any(s <= 0 for s in size):
        raise ValueError(f"{name} entries must be positive, got {tuple(size)}")
    prod = 1
    for s in size:
        prod *= s
    if prod != n:
        raise ValueError(f"{name}={tuple(size)} has {prod} positions but the input has N={n} tokens")
    return tuple(size)


def check_int(value: object, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int: ``TypeError`` unless it is an integer (``bool`` is not), ``ValueError``
    if it is below ``minimum``; both name the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_bool(value: object, name: str) -> bool:
    """``value`` itself if it is a ``bool``; ``TypeError`` naming the argument otherwise (``1`` and
    ``"yes"`` are not bools)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_float(value: object, name: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float: ``TypeError`` unless it is a real number (``bool`` is not),
    ``ValueError`` if it is NaN/Inf, below ``minimum`` or (with ``positive``) not above 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_rate(value: object, name: str) -> float:
    """``value`` as a float probability in ``[0, 1)`` (a dropout rate): ``TypeError`` unless it is a
    real number (``bool`` is not), ``ValueError`` outside the interval; both name the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__} {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def check_divisible(value: int, divisor: int, value_name: str, divisor_name: str) -> None:
    """Raise ``TypeError`` unless both are ints, ``ValueError`` unless both are positive and
    ``divisor`` divides ``value``."""
    value = check_int(value, value_name)
    divisor = check_int(divisor, divisor_name)
    if value % divisor != 0:
        raise ValueError(f"{divisor_name}={divisor} must divide {value_name}={value}")
