"""Family interfaces: the forward contract every mechanism of a family honours.

Each base class validates its inputs (raising ``TypeError``/``ValueError`` that name the argument)
and then calls :meth:`compute`, which a mechanism implements. The conformance suite
(``tests/test_conformance.py``) checks every registered mechanism against its family's contract.

=================  =====================================================================
family             contract
=================  =====================================================================
token_mixer        ``forward(x: (B, N, C), *, size=None) -> (B, N, C)``; 2-D mixers need
                   ``size=(H, W)`` with ``H*W == N``; sequence mixers take ``causal`` at
                   construction, and those whose card declares ``key_padding`` a keyword
                   ``key_padding_mask (B, N)`` (bool, True = keep): a padded batch gives each
                   sequence exactly its unpadded result, and padded positions zero outputs.
cross_attention    ``forward(x: (B, N, C), context: (B, M, C_ctx), *, mask=None, size=None)
                   -> (B, N, C)``: queries ``x`` read from ``context``; ``mask (B, M)`` is a
                   key-padding mask, True = attend.
feature_map        ``forward(x: (B, C, *S)) -> (B, C, *S)`` with ``len(S) == spatial_dims``.
gate               ``forward(x: (B, C, *S), g: (B, C_g, *S_g)) -> (B, C, *S)``; the gating
                   signal ``g`` may be at a coarser resolution.
pooling            ``forward(x: (B, N, C), *, mask=None) -> PoolOutput(pooled (B, C_out),
                   attention (B, ..., N))``; ``mask (B, N)`` is True for real instances.
=================  =====================================================================

Every mechanism's constructor takes torch's factory keywords ``device=`` and ``dtype=`` (added by
:class:`Mechanism` to each subclass's ``__init__``). A half-precision output that holds NaN/Inf from
finite inputs (an overflow) raises :class:`attnzoo.checks.NonFiniteOutputWarning`.

Mechanism-specific keyword inputs (a region map, a query embedding, other pyramid levels) pass
through ``forward`` to ``compute``, which validates them with errors naming the argument.
Boolean masks everywhere in attnzoo mean True = may attend / is present.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from attnzoo.capture import module_scope
from attnzoo.checks import (
    NonFiniteOutputWarning,
    check_factory_device,
    check_factory_dtype,
    check_size,
    check_tensor,
    finite_check_enabled,
    tracing,
)

__all__ = [
    "CrossAttention",
    "FeatureMapAttention",
    "Gate",
    "Mechanism",
    "PoolOutput",
    "Pooling",
    "TokenMixer",
    "key_padding_support",
]


def _check_channels(x: torch.Tensor, axis: int, expected: int, name: str, attr: str) -> None:
    if x.shape[axis] != expected:
        raise ValueError(
            f"{name} has {x.shape[axis]} channels on dimension {axis} but the module was built "
            f"with {attr}={expected} (shape {tuple(x.shape)})"
        )


def _check_dtype(module: nn.Module, **inputs: torch.Tensor) -> None:
    """Refuse floating inputs whose dtype differs from the module's floating parameters (outside
    autocast, which casts inside the ops), naming both dtypes and the two ways to convert."""
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    if param is None or torch.is_autocast_enabled(param.device.type):
        return
    for name, t in inputs.items():
        if t.is_floating_point() and t.dtype != param.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {type(module).__name__}'s parameters are {param.dtype}: "
                f"convert the input ({name}.to({param.dtype})) or the module (module.to({t.dtype}))"
            )


def _check_mask(mask: torch.Tensor | None, b: int, n: int, name: str = "mask") -> torch.Tensor | None:
    if mask is None:
        return None
    check_tensor(mask, name, ndim=2, floating=False, nonempty=False, finite=False)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = attend), got dtype {mask.dtype}")
    if tuple(mask.shape) != (b, n):
        raise ValueError(f"{name} must have shape {(b, n)}, got {tuple(mask.shape)}")
    return mask


_HALF = (torch.float16, torch.bfloat16)


def _flag_nonfinite(module: nn.Module, out: Any) -> Any:
    """Warn when a half-precision output holds NaN/Inf (inputs were checked finite, so the mechanism
    overflowed in half precision); one reduction over the output, skipped while tracing."""
    if tracing() or not finite_check_enabled():
        return out
    tensors = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
    for t in tensors:
        if t.dtype in _HALF and not bool(torch.isfinite(t).all()):
            warnings.warn(
                f"{type(module).__name__} produced NaN/Inf in {t.dtype} from finite inputs (half-precision "
                "overflow): run it in float32, or under torch.autocast with float32 parameters",
                NonFiniteOutputWarning,
                stacklevel=5,
            )
            break
    return out


_KW = inspect.Parameter.KEYWORD_ONLY
_FACTORY = (
    inspect.Parameter("device", _KW, default=None, annotation="torch.device | str | None"),
    inspect.Parameter("dtype", _KW, default=None, annotation="torch.dtype | None"),
)


def _with_factory_kwargs(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a mechanism's ``__init__`` so that it takes torch's factory keywords ``device`` and ``dtype``:
    parameters and buffers are created on ``device`` (``"meta"`` allocates nothing) and floating ones
    are cast to ``dtype`` once the module is built."""
    sig = inspect.signature(init)
    if any(p.name in sig.parameters for p in _FACTORY):
        raise TypeError(f"{init.__qualname__} declares device/dtype: Mechanism provides them")
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))

    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, device: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        device = check_factory_device(device)
        dtype = check_factory_dtype(dtype)
        if device is None:
            init(self, *args, **kwargs)
        else:
            with device:
                init(self, *args, **kwargs)
        if dtype is not None:
            self.to(dtype=dtype)

    __init__.__signature__ = sig.replace(parameters=[*params[:at], *_FACTORY, *params[at:]])  # type: ignore[attr-defined]
    __init__.__attnzoo_factory__ = True  # type: ignore[attr-defined]
    return __init__


class Mechanism(nn.Module):
    """Base of all registered mechanisms; ``card`` is set by :func:`attnzoo.register`.

    Every mechanism's constructor also takes torch's factory keywords, as torch layers do.

    Args:
        device: device on which parameters and buffers are created (``"meta"`` allocates nothing);
            default: torch's current default device.
        dtype: floating dtype of the parameters and floating buffers; default: torch's default dtype.
    """

    card: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "__attnzoo_factory__", False):
            cls.__init__ = _with_factory_kwargs(init)  # type: ignore[method-assign]

    @property
    def spatial_dims(self) -> int:
        """Number of spatial axes of the input (0 set, 1 sequence, 2 grid, 3 volume)."""
        return self.card.spatial_dims

    def compute(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")


_PADDING_RULES = {
    "edges": "keep one contiguous run of tokens per row (padding on the left and/or right)",
    "right": "keep the first tokens of each row (right padding only)",
}


def _padding_refusal(card: Any) -> str | None:
    """Why ``card``'s mechanism refuses a ``key_padding_mask``, or ``None`` when it honours one."""
    if card.key_padding != "none":
        return None
    if card.key_padding_note:
        return card.key_padding_note
    if card.spatial_dims != 1:
        return f"a {card.spatial_dims}-D mixer mixes a spatial grid, which has no padded sequence positions"
    return "its card declares no key-padding support (Card.key_padding='none')"


def key_padding_support(card: Any) -> str:
    """One line saying which ``key_padding_mask`` a token mixer's card honours (or why it refuses)."""
    if card.key_padding == "any":
        return "any pattern (the kept tokens act as one sequence)"
    rule = _PADDING_RULES.get(card.key_padding)
    if rule is not None:
        return f"masks that {rule}" + (f": {card.key_padding_note}" if card.key_padding_note else "")
    return f"refused: {_padding_refusal(card)}"


def _check_key_padding_mask(module: TokenMixer, mask: object, x: torch.Tensor) -> torch.Tensor:
    """Validate ``key_padding_mask`` against ``x (B, N, C)`` and ``module``'s card; return it."""
    name = "key_padding_mask"
    refusal = _padding_refusal(module.card)
    if refusal is not None:
        raise ValueError(f"{name} cannot be honoured by {module.card.name!r}: {refusal}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor (True = keep), got {type(mask).__name__}")
    _check_mask(mask, x.shape[0], x.shape[1], name)
    if mask.device != x.device:
        raise ValueError(f"{name} is on {mask.device} but x is on {x.device}")
    if tracing():
        return mask
    if not bool(mask.any(dim=1).all()):
        raise ValueError(f"{name} leaves a sequence with no token: every row needs at least one True")
    support = module.card.key_padding
    if support in _PADDING_RULES:
        runs = (mask.to(torch.int8).diff(dim=1) > 0).sum(dim=1) + mask[:, 0]  # kept runs per row
        bad = runs > 1
        if support == "right":
            bad = bad | ~mask[:, 0]
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"{name}: {module.card.name!r} needs masks that {_PADDING_RULES[support]}; rows {rows} do not"
            )
    return mask


class TokenMixer(Mechanism):
    """``(B, N, C) -> (B, N, C)``. Subclasses set ``self.dim`` and implement
    ``compute(x, size)`` where ``size`` is the validated spatial size (``(N,)`` for sequences).

    A mixer whose sequence starts with ``num_prefix_tokens`` extra tokens (e.g. a class token)
    checks ``N == num_prefix_tokens + H*W``. Mechanism-specific keyword inputs (e.g. a region map)
    are passed through to ``compute(x, size, **extra)``, which validates them.

    ``key_padding_mask (B, N)`` (bool, True = keep) runs a padded batch of sequences: padded keys
    are invisible, and each sequence's kept outputs equal running it alone without padding.
    Padded tokens of ``x`` are zeroed before ``compute`` (so whatever they hold, NaN included, has
    no effect, nor gradient) and their outputs are zeros. A mechanism whose card declares ``key_padding``
    other than ``"none"`` receives the validated mask as ``compute(x, size,
    key_padding_mask=mask)``; the others refuse it with the reason of ``card.key_padding_note``.
    Without a mask nothing changes: ``compute`` is called exactly as before."""

    dim: int
    causal: bool = False
    num_prefix_tokens: int = 0

    def forward(
        self,
        x: torch.Tensor,
        *,
        size: tuple[int, ...] | None = None,
        key_padding_mask: torch.Tensor | None = None,
        **extra: Any,
    ) -> torch.Tensor:
        check_tensor(x, "x", ndim=3, finite=key_padding_mask is None)
        _check_channels(x, 2, self.dim, "x", "dim")
        _check_dtype(self, x=x)
        nd = self.spatial_dims
        n = x.shape[1] - self.num_prefix_tokens
        if n <= 0:
            raise ValueError(f"x has {x.shape[1]} tokens, fewer than num_prefix_tokens + 1")
        if nd >= 2:
            size = check_size(size, n, spatial_dims=nd)
        elif size is not None:
            size = check_size(size, n, spatial_dims=1)
        else:
            size = (n,)
        if key_padding_mask is None:
            with module_scope(self):
                return _flag_nonfinite(self, self.compute(x, size, **extra))
        keep = _check_key_padding_mask(self, key_padding_mask, x)[..., None]
        x = check_tensor(x.masked_fill(~keep, 0), "x")  # padded tokens may hold anything, even NaN
        with module_scope(self):
            out = self.compute(x, size, key_padding_mask=key_padding_mask, **extra)
            return _flag_nonfinite(self, out.masked_fill(~keep, 0))


class CrossAttention(Mechanism):
    """``(B, N, C), (B, M, C_ctx) -> (B, N, C)``. Subclasses set ``self.dim`` and
    ``self.context_dim`` and implement ``compute(x, context, mask, size)``; ``size`` is the
    spatial size of ``context`` when the mechanism needs it (``context_spatial_dims``)."""

    dim: int
    context_dim: int
    context_spatial_dims: int = 0

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        size: tuple[int, ...] | None = None,
        **extra: Any,
    ) -> torch.Tensor:
        check_tensor(x, "x", ndim=3)
        check_tensor(context, "context", ndim=3)
        _check_channels(x, 2, self.dim, "x", "dim")
        _check_channels(context, 2, self.context_dim, "context", "context_dim")
        _check_dtype(self, x=x, context=context)
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context batch {context.shape[0]} differs from x batch {x.shape[0]}")
        mask = _check_mask(mask, context.shape[0], context.shape[1])
        if self.context_spatial_dims >= 2:
            size = check_size(size, context.shape[1], spatial_dims=self.context_spatial_dims)
        elif size is not None:
            size = check_size(size, context.shape[1], spatial_dims=1)
        with module_scope(self):
            return _flag_nonfinite(self, self.compute(x, context, mask, size, **extra))


class FeatureMapAttention(Mechanism):
    """``(B, C, *S) -> (B, C, *S)``. Subclasses set ``self.channels`` and implement ``compute(x)``."""

    channels: int

    def forward(self, x: torch.Tensor, **extra: Any) -> torch.Tensor:
        check_tensor(x, "x", ndim=2 + self.spatial_dims)
        _check_channels(x, 1, self.channels, "x", "channels")
        _check_dtype(self, x=x)
        with module_scope(self):
            return _flag_nonfinite(self, self.compute(x, **extra))


class Gate(Mechanism):
    """``(B, C, *S), (B, C_g, *S_g) -> (B, C, *S)``. Subclasses set ``self.channels`` and
    ``self.gate_channels`` and implement ``compute(x, g)``."""

    channels: int
    gate_channels: int

    def forward(self, x: torch.Tensor, g: torch.Tensor, **extra: Any) -> torch.Tensor:
        rank = 2 + self.spatial_dims
        check_tensor(x, "x", ndim=rank)
        check_tensor(g, "g", ndim=rank)
        _check_channels(x, 1, self.channels, "x", "channels")
        _check_channels(g, 1, self.gate_channels, "g", "gate_channels")
        _check_dtype(self, x=x, g=g)
        if g.shape[0] != x.shape[0]:
            raise ValueError(f"g batch {g.shape[0]} differs from x batch {x.shape[0]}")
        with module_scope(self):
            return _flag_nonfinite(self, self.compute(x, g, **extra))


class PoolOutput(NamedTuple):
    """Result of a pooling mechanism.

    Attributes:
        pooled: ``(B, C_out)`` bag/sequence representation.
        attention: ``(B, N)`` or ``(B, branches, N)`` attention weights over instances;
            masked instances have weight 0.
    """

    pooled: torch.Tensor
    attention: torch.Tensor


class Pooling(Mechanism):
    """``(B, N, C) [+ mask (B, N)] -> PoolOutput``. Subclasses set ``self.dim`` and implement
    ``compute(x, mask)``; every bag must keep at least one instance."""

    dim: int

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, **extra: Any) -> PoolOutput:
        check_tensor(x, "x", ndim=3)
        _check_channels(x, 2, self.dim, "x", "dim")
        _check_dtype(self, x=x)
        mask = _check_mask(mask, x.shape[0], x.shape[1])
        if mask is not None and not tracing() and not bool(mask.any(dim=1).all()):
            raise ValueError("mask leaves a bag with no instance: every row needs at least one True")
        with module_scope(self):
            return _flag_nonfinite(self, self.compute(x, mask, **extra))
