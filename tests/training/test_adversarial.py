"""Attention AT / iAT / VAT (attnzoo.training): gradients, norms, the loss identity, the power
iteration, the refusal of mechanisms without kernel scores, and mechanisms from the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnzoo
from attnzoo.kernels import attention
from attnzoo.training import (
    PerturbationError,
    attention_adversarial_loss,
    attention_vat_loss,
    score_gradients,
    score_perturbation,
)

D64 = torch.float64


class Tiny(nn.Module):
    """``tokens (B, N, C) -> logits (B, classes)``: registry mixers, mean over tokens, a linear head."""

    def __init__(
        self, names: list[str], classes: int = 3, dtype: torch.dtype = D64, **kwargs: object
    ) -> None:
        super().__init__()
        self.mixers = nn.ModuleList(
            attnzoo.create(n, **{**attnzoo.card(n).tiny, **kwargs}, dtype=dtype) for n in names
        )
        dim = self.mixers[0].dim
        self.head = nn.Linear(dim, classes, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.mixers:
            x = x + m(x)
        return self.head(x.mean(1))


def _setup(names: list[str], batch: int = 4, n: int = 5, seed: int = 0, **kwargs: object):
    torch.manual_seed(seed)
    model = Tiny(names, **kwargs)
    x = torch.randn(batch, n, model.mixers[0].dim, dtype=D64)
    y = torch.randint(0, 3, (batch,))
    return model, (lambda: model(x)), (lambda out: F.cross_entropy(out, y))


def _loss_with(model, run, loss_fn, call: int, index: tuple[int, ...], h: float) -> float:
    def add(i, scores, allowed):
        if i != call:
            return scores
        bump = torch.zeros_like(scores)
        bump[index] = h
        return scores + bump

    with torch.no_grad(), score_perturbation(add):
        return float(loss_fn(run()))


def test_score_gradient_and_at_direction_match_finite_differences():
    model, run, loss_fn = _setup(["mhsa", "mhsa"], batch=2, n=4)
    _, _, sites, grads = score_gradients(model, run, loss_fn)
    assert len(sites) == 2
    at = attention_adversarial_loss(model, run, loss_fn, epsilon=0.3)
    h = 1e-6
    for call in range(2):
        fd = torch.zeros_like(grads[call])
        for index in torch.cartesian_prod(*(torch.arange(s) for s in fd.shape)).tolist():
            index = tuple(index)
            fd[index] = (
                _loss_with(model, run, loss_fn, call, index, h)
                - _loss_with(model, run, loss_fn, call, index, -h)
            ) / (2 * h)
        torch.testing.assert_close(grads[call], fd, rtol=1e-6, atol=1e-9)
        expected = 0.3 * fd / fd.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        torch.testing.assert_close(at.perturbations[call], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("interpretable", [False, True])
@pytest.mark.parametrize("kind", ["at", "vat"])
def test_perturbation_has_norm_epsilon_and_spares_masked_keys(kind, interpretable):
    model, run, loss_fn = _setup(["mhsa"], causal=True)
    eps = 0.7
    if kind == "at":
        out = attention_adversarial_loss(model, run, loss_fn, epsilon=eps, interpretable=interpretable)
    else:
        gen = torch.Generator().manual_seed(1)
        out = attention_vat_loss(
            model, run, epsilon=eps, n_power=2, interpretable=interpretable, generator=gen
        )
    (r,) = out.perturbations
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((4,), eps, dtype=D64))
    future = ~torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.all(r[..., future] == 0)


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_epsilon_zero_gives_one_plus_lambda_times_the_clean_loss(lam):
    model, run, loss_fn = _setup(["mhsa"])
    out = attention_adversarial_loss(model, run, loss_fn, epsilon=0.0, lam=lam)
    torch.testing.assert_close(out.perturbed, out.clean)
    torch.testing.assert_close(out.total, (1 + lam) * out.clean)
    if lam == 1.0:
        torch.testing.assert_close(out.total, 2 * out.clean)
    torch.testing.assert_close(out.clean, loss_fn(run()))


def test_at_raises_the_loss_by_eps_times_the_gradient_norm():
    model, run, loss_fn = _setup(["mhsa", "mhsa"])
    _, _, _, grads = score_gradients(model, run, loss_fn)
    eps = 1e-5
    out = attention_adversarial_loss(model, run, loss_fn, epsilon=eps)
    first_order = eps * sum(float(g.flatten(1).norm(dim=1).sum()) for g in grads)
    assert float((out.perturbed - out.clean).detach()) == pytest.approx(first_order, rel=1e-3)


def test_iat_lies_in_the_span_of_sample_differences_and_is_adversarial():
    model, run, loss_fn = _setup(["mhsa"], batch=3, n=6)
    out = attention_adversarial_loss(model, run, loss_fn, epsilon=1e-5, interpretable=True)
    (site,) = out.sites
    (r,) = out.perturbations
    a = site.scores.flatten(1)
    for b in range(3):
        basis = torch.stack([a[b] - a[c] for c in range(3) if c != b], dim=1)  # (M, B-1)
        coef = torch.linalg.lstsq(basis, r[b].flatten().unsqueeze(1)).solution
        torch.testing.assert_close(basis @ coef, r[b].flatten().unsqueeze(1), rtol=1e-8, atol=1e-12)
    assert float(out.perturbed.detach()) > float(out.clean.detach())
    plain = attention_adversarial_loss(model, run, loss_fn, epsilon=1e-5)
    assert float((plain.perturbed - plain.clean).detach()) >= float((out.perturbed - out.clean).detach())


class SoftmaxOfScores(nn.Module):
    """One kernel call whose output is the attention row itself: ``log softmax(a)`` as logits."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = a

    def forward(self) -> torch.Tensor:
        n = self.a.numel()
        q = self.a.view(1, 1, 1, n)
        k = torch.eye(n, dtype=self.a.dtype).view(1, 1, n, n)
        v = torch.eye(n, dtype=self.a.dtype).view(1, 1, n, n)
        return attention(q, k, v, scale=1.0).view(1, n).log()


def test_vat_power_iteration_finds_the_dominant_eigenvector():
    # KL(p || softmax(a + r)) = r^T (diag(p) - p p^T) r / 2 + O(r^3): the power iteration on its
    # gradient converges to the top eigenvector of the softmax Fisher matrix diag(p) - p p^T.
    a = torch.tensor([2.0, 0.5, -1.0, 0.0], dtype=D64)
    model = SoftmaxOfScores(a)
    p = a.softmax(0)
    evals, evecs = torch.linalg.eigh(torch.diag(p) - torch.outer(p, p))
    assert evals[-1] - evals[-2] > 0.05
    top = evecs[:, -1]
    gen = torch.Generator().manual_seed(0)
    out = attention_vat_loss(model, model, epsilon=0.5, xi=1e-5, n_power=30, generator=gen)
    r = out.perturbations[0].flatten()
    assert float(r.norm()) == pytest.approx(0.5)
    assert abs(float(r @ top)) / 0.5 == pytest.approx(1.0, abs=1e-6)
    one = attention_vat_loss(model, model, epsilon=0.5, xi=1e-5, n_power=1, generator=torch.Generator())
    assert float(out.perturbed.detach()) >= float(one.perturbed.detach())


def test_vat_total_adds_lambda_times_kl_to_the_supervised_loss():
    model, run, loss_fn = _setup(["mhsa"])
    gen = torch.Generator().manual_seed(0)
    out = attention_vat_loss(model, run, loss_fn, epsilon=0.5, lam=3.0, generator=gen)
    torch.testing.assert_close(out.total, out.clean + 3.0 * out.perturbed)
    assert float(out.perturbed.detach()) > 0
    unlabeled = attention_vat_loss(model, run, epsilon=0.0, generator=gen)
    assert unlabeled.clean is None
    torch.testing.assert_close(unlabeled.total, torch.zeros((), dtype=D64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("names", [["linear_attention"], ["mhsa", "linear_attention"]])
def test_mechanism_without_kernel_scores_is_refused_by_name(names):
    model, run, loss_fn = _setup(names)
    with pytest.raises(PerturbationError, match=r"mixers\.\d \(linear_attention\)") as info:
        attention_adversarial_loss(model, run, loss_fn)
    assert "(mhsa)" not in str(info.value)
    with pytest.raises(PerturbationError, match="linear_attention"):
        attention_vat_loss(model, run)


def test_forwards_that_change_their_kernel_calls_are_refused():
    model, _, loss_fn = _setup(["mhsa"])
    lengths = iter([5, 6])

    def run() -> torch.Tensor:
        return model(torch.randn(4, next(lengths), 8, dtype=D64))

    with pytest.raises(PerturbationError, match="does not match the first forward"):
        attention_adversarial_loss(model, run, loss_fn)


@pytest.mark.parametrize("name", ["mhsa", "moh_attention", "sliding_window", "context_aware_attention"])
def test_registry_softmax_mixers_train_with_at_iat_and_vat(name):
    model, run, loss_fn = _setup([name], n=7)
    for step in (
        attention_adversarial_loss(model, run, loss_fn, epsilon=1e-3),
        attention_adversarial_loss(model, run, loss_fn, epsilon=1e-3, interpretable=True),
        attention_vat_loss(model, run, loss_fn, epsilon=1e-2, generator=torch.Generator().manual_seed(0)),
    ):
        assert step.sites and all(s.module == "mixers.0" for s in step.sites)
        assert torch.isfinite(step.total)
        model.zero_grad()
        step.total.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    at = attention_adversarial_loss(model, run, loss_fn, epsilon=1e-4)
    assert float(at.perturbed.detach()) > float(at.clean.detach())


def test_kernel_is_unchanged_outside_and_under_a_zero_perturbation():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=D64) for _ in range(3))
    clean = attention(q, k, v, causal=True)
    with score_perturbation(lambda i, scores, allowed: scores):
        same = attention(q, k, v, causal=True)
    torch.testing.assert_close(same, clean)
    with score_perturbation(lambda i, scores, allowed: scores[..., :1]), pytest.raises(PerturbationError):
        attention(q, k, v)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"epsilon": -1.0}, ValueError, "epsilon"),
        ({"epsilon": True}, TypeError, "epsilon"),
        ({"lam": "1"}, TypeError, "lam"),
        ({"lam": -0.1}, ValueError, "lam"),
        ({"interpretable": 1}, TypeError, "interpretable"),
        ({"xi": 0.0}, ValueError, "xi"),
        ({"n_power": 0}, ValueError, "n_power"),
        ({"n_power": 1.5}, TypeError, "n_power"),
        ({"generator": 3}, TypeError, "generator"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, name):
    model, run, loss_fn = _setup(["mhsa"])
    vat_only = {"xi", "n_power", "generator"}
    if not set(kwargs) & vat_only:
        with pytest.raises(error, match=name):
            attention_adversarial_loss(model, run, loss_fn, **kwargs)
    with pytest.raises(error, match=name):
        attention_vat_loss(model, run, loss_fn, **kwargs)


def test_bad_callables_and_single_sample_iat_are_named():
    model, run, loss_fn = _setup(["mhsa"], batch=1)
    with pytest.raises(TypeError, match="model"):
        attention_adversarial_loss(run, run, loss_fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_fn"):
        attention_adversarial_loss(model, run, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="run"):
        attention_vat_loss(model, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interpretable=True needs at least 2 samples"):
        attention_adversarial_loss(model, run, loss_fn, interpretable=True)
