"""torch's factory keywords on every mechanism (``device=``, ``dtype=``) and the half-precision
overflow flag of every family's forward."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import attnzoo
from attnzoo.checks import NonFiniteOutputWarning
from attnzoo.families import TokenMixer
from attnzoo.inputs import example_inputs

NAMES = attnzoo.list_mechanisms()


def _floating(module: torch.nn.Module) -> set[torch.dtype]:
    tensors = [*module.parameters(), *module.buffers()]
    return {t.dtype for t in tensors if t.is_floating_point()}


@pytest.mark.parametrize("name", NAMES)
def test_dtype_builds_every_floating_tensor_in_that_dtype(name: str) -> None:
    card = attnzoo.card(name)
    module = attnzoo.create(name, **card.tiny, dtype=torch.float64).eval()
    assert _floating(module) == {torch.float64}
    ex = example_inputs(module, batch=2, dtype=torch.float64)
    out = module(*ex.args, **ex.kwargs)
    first = out if isinstance(out, torch.Tensor) else out[0]
    assert first.dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_meta_device_allocates_nothing_and_matches_the_cpu_layout(name: str) -> None:
    card = attnzoo.card(name)
    meta = attnzoo.create(name, **card.tiny, device="meta")
    cpu = attnzoo.create(name, **card.tiny, device=torch.device("cpu"))
    assert {t.device.type for t in [*meta.parameters(), *meta.buffers()]} <= {"meta"}
    assert {t.device.type for t in [*cpu.parameters(), *cpu.buffers()]} == {"cpu"}
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in cpu.state_dict().items()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in meta.state_dict().items()} == shapes


@pytest.mark.parametrize("name", NAMES)
def test_signature_shows_the_factory_keywords(name: str) -> None:
    params = inspect.signature(attnzoo.mechanism_class(name).__init__).parameters
    for key in ("device", "dtype"):
        assert params[key].kind is inspect.Parameter.KEYWORD_ONLY and params[key].default is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dtype": torch.int64}, TypeError, "dtype must be a floating torch.dtype"),
        ({"dtype": "float32"}, TypeError, "dtype must be a floating torch.dtype"),
        ({"device": "bogus"}, ValueError, "device='bogus' is not a device"),
        ({"device": 1.5}, TypeError, "device must be a str, int or torch.device"),
        ({"device": True}, TypeError, "device must be a str, int or torch.device"),
    ],
)
def test_bad_factory_keywords_are_named(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        attnzoo.create("mhsa", dim=16, num_heads=2, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_refused_before_building() -> None:
    with pytest.raises(ValueError, match="device='cuda' is not a device this machine can use"):
        attnzoo.create("se", channels=8, device="cuda")


def test_a_mechanism_cannot_declare_its_own_factory_keywords() -> None:
    with pytest.raises(TypeError, match="declares device/dtype"):

        class Own(TokenMixer):
            def __init__(self, dim: int, *, device: object = None) -> None:
                super().__init__()


def test_half_precision_overflow_is_flagged_and_normal_inputs_are_not() -> None:
    module = attnzoo.create("mhsa", dim=16, num_heads=2, dtype=torch.float16).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteOutputWarning)
        assert torch.isfinite(module(torch.randn(1, 8, 16, dtype=torch.float16))).all()
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(0.5)  # every q/k/v entry is 16 * 0.5 * 6e4 > 65504: the projection overflows
    flagged = "MultiHeadSelfAttention produced NaN/Inf in torch.float16"
    with pytest.warns(NonFiniteOutputWarning, match=flagged):
        out = module(torch.full((1, 8, 16), 6e4, dtype=torch.float16))
    assert not torch.isfinite(out).all()


def test_float32_nonfinite_is_not_this_flag() -> None:
    module = attnzoo.create("se", channels=8).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteOutputWarning)
        module(torch.full((1, 8, 4, 4), 3e38))
