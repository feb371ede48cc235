"""attnzoo attention inside Hugging Face ``transformers`` models, through ``AttentionInterface``.

:func:`register` adds one ``attn_implementation`` per mechanism whose math runs on a pretrained
model's own q/k/v, each with its mask function in ``AttentionMaskInterface`` (so the model's causal,
padding and sliding-window masks always reach it)::

    from attnzoo.integrations import hf

    hf.register()
    model.set_attn_implementation("attnzoo_mhsa")        # same outputs as eager, weights on request
    out = model(**batch, output_attentions=True)          # out.attentions: attnzoo's probabilities

    hf.configure(model, "sliding_window", window=64)      # validate, attach, switch implementation
    model.set_attn_implementation("eager")                # switch freely: the settings stay attached
    model.set_attn_implementation("attnzoo_sliding_window")
    hf.configure(model, "act", heads={2: [0, 5]}, beta=0.4)
    hf.unconfigure(model)

==================================  ==================================================
implementation                      computes (settings given to :func:`configure`)
==================================  ==================================================
attnzoo_mhsa                        softmax attention: SDPA, or materialised when
                                    ``output_attentions`` or a capture asks (none)
attnzoo_sliding_window              the ``sliding_window`` mixer's band: ``window`` keys
                                    per side, past only in a causal model (``window``,
                                    default the model's own ``sliding_window - 1``)
attnzoo_neighborhood_attention_1d   NATTEN 1-D neighbourhoods, causal windows in a causal
                                    model, no relative bias (``kernel_size``, ``dilation``)
attnzoo_s2_attention                LongLoRA/SinkLoRA groups, half of the heads shifted,
                                    plus sink tokens (``group_size``, ``num_sink``)
attnzoo_act                         ACT sink calibration, :mod:`attnzoo.inference.act`
                                    (``heads``, ``beta``, ``threshold``, ...)
attnzoo_var                         VAR redistribution, :mod:`attnzoo.inference.var`
                                    (``image_start``, ``image_len``, ``dim_sink``, ...)
attnzoo_pine                        PINE document attention, :mod:`attnzoo.inference.pine`
                                    (``prefix``, ``documents``)
attnzoo_recycled                    Recycled attention, :mod:`attnzoo.inference.recycled`
                                    (``stride``, ``top_k``)
==================================  ==================================================

Settings are frozen dataclasses (:data:`SETTINGS`) attached to the model's attention modules by
:func:`configure`; ``model.set_attn_implementation`` then switches between implementations with the
attached settings. A module whose implementation needs settings it was not given raises
:class:`IntegrationError` at its first call. The inference methods run on decoder models whose
attention modules have a ``layer_idx`` and a ``q_proj`` (as their context managers in
:mod:`attnzoo.inference`, whose results they reproduce). :data:`LEDGER` lists every difference
between these functions and the models' own attention or attnzoo's modules.

Under :func:`attnzoo.capture` every implementation records its attention maps under the module's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from attnzoo.analysis.hf import hf_attention_modules, num_heads_of, uses_transformers
from attnzoo.inference.act import ACTCalibration
from attnzoo.inference.hf_edit import hf_attention_layers
from attnzoo.inference.pine import PineLayout, rotary_embedding
from attnzoo.inference.recycled import RecycledAttention
from attnzoo.inference.var import PrefillSinks, VisualAttentionRedistribution
from attnzoo.integrations import IntegrationError
from attnzoo.integrations._hf_core import Binding, attnzoo_mask, binding, bindings
from attnzoo.integrations._hf_functions import FUNCTIONS, ACTState, PINEState, VARState
from attnzoo.integrations._hf_names import IMPLEMENTATIONS, MECHANISMS, PREFIX
from attnzoo.integrations._hf_settings import (
    SETTINGS,
    ACTSettings,
    NeighborhoodSettings,
    PINESettings,
    RecycledSettings,
    S2Settings,
    SlidingWindowSettings,
    SoftmaxSettings,
    VARSettings,
    make_settings,
    resolve,
)

__all__ = [
    "IMPLEMENTATIONS",
    "LEDGER",
    "MECHANISMS",
    "SETTINGS",
    "ACTSettings",
    "Configuration",
    "NeighborhoodSettings",
    "PINESettings",
    "RecycledSettings",
    "S2Settings",
    "SlidingWindowSettings",
    "SoftmaxSettings",
    "VARSettings",
    "configure",
    "implementation_name",
    "register",
    "unconfigure",
]

LEDGER = (
    "Weights: output_attentions returns attnzoo's probabilities before attention dropout; eager returns "
    "them after dropout, so the two differ only in training mode with attention dropout.",
    "Masks: each implementation registers transformers' sdpa_mask cast to eager's additive float mask; it "
    "is skipped exactly when SDPA's would be (then is_causal decides, as in sdpa_attention_forward), and "
    "query rows without any allowed key stay finite as in eager.",
    "Windowed mechanisms lay their pattern on key positions with the queries at the last N_q keys: exact "
    "without a cache and with a dynamic cache; a static cache's empty slots would count as positions.",
    "Causality follows the model: a causal module gets causal windows (w past keys; NATTEN's causal "
    "neighbourhoods; causal S2 groups), a non-causal one two-sided windows. Cross-attention is refused.",
    "sliding_window: window counts keys per side, self excluded; a model's own sliding_window W (Mistral, "
    "Qwen2) is window = W - 1, the default; a wider window than the model's is refused (its mask already "
    "hides those keys).",
    "neighborhood_attention_1d: no relative position bias (a pretrained model has none); non-causal windows "
    "refuse padded batches (padding would move the clamped windows), causal windows accept padding.",
    "s2_attention: SinkLoRA's non-cyclic shift with num_sink sinks (the mixer's default form); LongLoRA's "
    "cyclic roll (not causal) is not offered; left padding is refused (groups and sinks sit on key "
    "positions).",
    "Fast paths: without a mask (encoders without padding, unpadded causal prefill) the blocked kernels "
    "run (no N x N tensor); with a mask, or when weights are asked for, the pattern is folded into the "
    "mask and dense softmax runs.",
    "ACT, VAR, PINE and Recycled attention reuse attnzoo.inference (ACTCalibration, "
    "VisualAttentionRedistribution with PrefillSinks, pine_attention_rotated, RecycledAttention) on "
    "decoders with layer_idx attention modules; PINE and Recycled refuse attention dropout and "
    "output_attentions (no single softmax map over all keys), PINE refuses padded prompts.",
)


def register() -> tuple[str, ...]:
    """Register every attnzoo implementation and its mask function with ``transformers``
    (idempotent: registering again installs the same functions). Returns :data:`IMPLEMENTATIONS`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name in IMPLEMENTATIONS:
        AttentionInterface.register(name, FUNCTIONS[name])
        AttentionMaskInterface.register(name, attnzoo_mask)
    return IMPLEMENTATIONS


def implementation_name(mechanism: str) -> str:
    """``"attnzoo_<mechanism>"`` for a supported mechanism name, alias or implementation name.

    Raises:
        IntegrationError: unknown (lists the closest names) or not fitting a pretrained q/k/v (says why).
    """
    return PREFIX + resolve(mechanism)


@dataclass(frozen=True)
class Configuration:
    """What :func:`configure` attached.

    Attributes:
        implementation: the ``attn_implementation`` the model now runs.
        settings: the validated settings.
        modules: names of the configured attention modules (``model.named_modules()``).
        states: ``{module name: runtime state}`` where the mechanism keeps one: a
            :class:`~attnzoo.inference.recycled.RecycledAttention` per layer (``recycled``), a
            ``VARState`` whose ``sinks`` are the prefill sink tokens (``var``).
    """

    implementation: str
    settings: Any
    modules: tuple[str, ...]
    states: Mapping[str, Any]


Plan = dict[str, tuple[nn.Module, Binding]]


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    modules = hf_attention_modules(model)
    if not modules:
        raise IntegrationError(
            f"model: {type(model).__name__} has no transformers attention modules to configure"
        )
    return modules


def _layers(model: nn.Module) -> dict[int, tuple[str, nn.Module]]:
    try:
        layers = hf_attention_layers(model)
    except ValueError as e:
        raise IntegrationError(f"model: {e} (the inference methods need a decoder with layer_idx)") from e
    names = {id(m): n for n, m in model.named_modules()}
    return {i: (names[id(m)], m) for i, m in layers.items()}


def _check_layers(chosen: Any, layers: Mapping[int, Any], name: str) -> None:
    missing = sorted(set(chosen) - set(layers))
    if missing:
        raise IntegrationError(f"{name}: layers {missing} are not in the model (layers 0..{max(layers)})")


def _plan_shared(model: nn.Module, settings: Any) -> Plan:
    return {n: (m, Binding(settings)) for n, m in _attention_modules(model).items()}


def _plan_sliding_window(model: nn.Module, settings: SlidingWindowSettings) -> Plan:
    plan = _plan_shared(model, settings)
    own = {getattr(m.config, "sliding_window", None) for m, _ in plan.values()} - {None}
    if settings.window is None and not own:
        raise IntegrationError(
            f"window: {type(model).__name__} has no sliding_window of its own, so pass window=<keys per side>"
        )
    if settings.window is not None and own and settings.window > min(own) - 1:
        raise IntegrationError(
            f"window={settings.window} exceeds the model's own sliding_window={min(own)}, whose mask already "
            f"hides keys more than {min(own) - 1} positions back; use window <= {min(own) - 1}"
        )
    return plan


def _plan_s2(model: nn.Module, settings: S2Settings) -> Plan:
    plan = _plan_shared(model, settings)
    odd = sorted(n for n, (m, _) in plan.items() if num_heads_of(m) % 2)
    if odd:
        raise IntegrationError(
            f"model: attention modules {odd} have an odd number of heads; S2 shifts half of the heads"
        )
    return plan


def _plan_act(model: nn.Module, settings: ACTSettings) -> Plan:
    layers = _layers(model)
    _check_layers(settings.heads, layers, "heads")
    calibration = ACTCalibration(settings.beta, settings.threshold, official_quirks=settings.official_quirks)
    plan = {}
    for i, (name, module) in layers.items():
        heads = settings.heads.get(i, ())
        bad = [h for h in heads if h >= num_heads_of(module)]
        if bad:
            raise IntegrationError(f"heads[{i}]: heads {bad} out of range for {num_heads_of(module)} heads")
        plan[name] = (module, Binding(settings, ACTState(calibration, heads)))
    return plan


def _sink_hook(module: nn.Module, prefill: PrefillSinks) -> Callable[..., None]:
    """``prefill`` as the pre-hook of the decoder layer owning ``module``, active while it runs VAR."""

    def hook(layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module.config._attn_implementation == PREFIX + "var":
            prefill(layer, args, kwargs)

    return hook


def _plan_var(model: nn.Module, settings: VARSettings) -> Plan:
    layers = _layers(model)
    chosen = list(range(2, len(layers))) if settings.layers is None else list(settings.layers)
    _check_layers(chosen, layers, "layers")
    hidden_size = getattr(layers[chosen[0]][1].config, "hidden_size", None) if chosen else None
    if hidden_size is not None and max(settings.dim_sink) >= hidden_size:
        raise IntegrationError(f"dim_sink {list(settings.dim_sink)} must index the hidden size {hidden_size}")
    var = VisualAttentionRedistribution(
        settings.dim_sink, settings.tau, settings.rho, settings.summ, settings.p
    )
    owners = {
        id(m.self_attn): m for m in model.modules() if isinstance(getattr(m, "self_attn", None), nn.Module)
    }
    plan = {}
    for i, (name, module) in layers.items():
        if i not in chosen:
            plan[name] = (module, Binding(settings))
            continue
        owner = owners.get(id(module))
        if owner is None:
            raise IntegrationError(
                f"layers: attention module {name!r} has no decoder layer owning it as self_attn"
            )
        state = VARState(PrefillSinks(var), settings.image_start, settings.image_len)
        hook = _sink_hook(module, state.prefill)
        plan[name] = (module, Binding(settings, state, pre_hooks=((owner, hook),)))
    return plan


def _plan_pine(model: nn.Module, settings: PINESettings) -> Plan:
    layers = _layers(model)
    try:
        rotary = rotary_embedding(model)
    except ValueError as e:
        raise IntegrationError(f"model: {e}") from e
    state = PINEState(PineLayout(settings.prefix, settings.documents), rotary)
    return {name: (module, Binding(settings, state)) for name, module in layers.values()}


def _plan_recycled(model: nn.Module, settings: RecycledSettings) -> Plan:
    return {
        name: (module, Binding(settings, RecycledAttention(settings.stride, settings.top_k)))
        for name, module in _layers(model).values()
    }


_PLANS: dict[str, Callable[[nn.Module, Any], Plan]] = {
    "mhsa": _plan_shared,
    "sliding_window": _plan_sliding_window,
    "neighborhood_attention_1d": _plan_shared,
    "s2_attention": _plan_s2,
    "act": _plan_act,
    "var": _plan_var,
    "pine": _plan_pine,
    "recycled": _plan_recycled,
}


def _detach(module: nn.Module, mechanism: str) -> None:
    old = bindings(module).pop(mechanism, None)
    for handle in old.handles if old is not None else ():
        handle.remove()


def configure(model: nn.Module, mechanism: str, **settings: Any) -> Configuration:
    """Validate ``settings`` for ``mechanism``, attach them to ``model``'s attention modules and switch
    the model to ``attnzoo_<mechanism>`` (replacing that mechanism's earlier settings).

    Args:
        model: a ``transformers`` model that supports ``set_attn_implementation``.
        mechanism: a name of :data:`MECHANISMS` (or an attnzoo alias, or ``attnzoo_<name>``).
        settings: the fields of ``SETTINGS[mechanism]``.

    Raises:
        TypeError: ``model`` is not a module, or a setting has the wrong type.
        IntegrationError: unknown or unfitting mechanism, unknown/missing/invalid setting, or a model it
            cannot run in; nothing is changed then.
    """
    name = resolve(mechanism)
    values = make_settings(name, settings)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not uses_transformers(model) or not hasattr(model, "set_attn_implementation"):
        raise IntegrationError(
            f"model: {type(model).__name__} is not a transformers model (no config with an attention "
            "implementation, or no set_attn_implementation)"
        )
    plan = _PLANS[name](model, values)
    register()
    implementation = PREFIX + name
    model.set_attn_implementation(implementation)
    if model.config._attn_implementation != implementation:
        raise IntegrationError(
            f"model: {type(model).__name__} cannot switch its attention implementation (it does not use "
            f"transformers' AttentionInterface), so {implementation} cannot run in it"
        )
    for module, new in plan.values():
        _detach(module, name)
        new.handles.extend(owner.register_forward_pre_hook(h, with_kwargs=True) for owner, h in new.pre_hooks)
        bindings(module)[name] = new
    states = {n: b.state for n, (_, b) in plan.items() if isinstance(b.state, (RecycledAttention, VARState))}
    return Configuration(implementation, values, tuple(plan), MappingProxyType(states))


def unconfigure(model: nn.Module, mechanism: str | None = None) -> None:
    """Remove the settings (and hooks) that :func:`configure` attached to ``model``: those of
    ``mechanism``, or all. The model keeps its current implementation; one that needs settings
    raises :class:`IntegrationError` at its next call."""
    names = MECHANISMS if mechanism is None else (resolve(mechanism),)
    for module in model.modules():
        for name in names:
            if binding(module, name) is not None:
                _detach(module, name)
