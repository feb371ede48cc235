"""Adversarial and virtual adversarial training of attention scores (Kitada & Iyatomi).

Attention AT / iAT (Kitada & Iyatomi, "Attention Meets Perturbations: Robust and Interpretable
Attention with Adversarial Training", IEEE Access 2021, arXiv:2009.12064) perturbs the pre-softmax
attention scores ``a`` of a model in the worst-case direction of its loss and trains on both::

    g = grad_a L(x, a; theta)            r_adv = eps * g / ||g||_2
    L_total = L(x, a; theta) + lambda * L(x, a + r_adv; theta)

Attention VAT (Kitada & Iyatomi, "Making Attention Mechanisms More Robust and Interpretable with
Virtual Adversarial Training", Applied Intelligence 2022, arXiv:2104.08763) needs no labels: with
``p = p(y | x, a)`` held fixed, the direction that most changes the prediction is found by power
iteration (Miyato et al., 2018) on ``D(r) = KL(p || p(y | x, a + r))`` from a random ``d``::

    repeat n_power times:  d <- grad_r D(r) at r = xi * d / ||d||_2
    r_vadv = eps * d / ||d||_2          L_total = L_sup + lambda * D(r_vadv)

``a`` are the masked scores ``S (B, h, N_q, N_k)`` of every call of the shared softmax kernel inside
the forward (:mod:`attnzoo.training.hook`); each call gets its own ``r`` of the same shape and every
norm is taken per sample (first axis) over that call's whole score tensor, masked keys excluded.
Each forward runs inside :func:`attnzoo.capture` of the model, so every perturbed call is named after
its mechanism, and every attnzoo mechanism of the model must have been reached:
:class:`~attnzoo.training.hook.PerturbationError` names any that forms no scores through the kernel
(linear attention, SE, neighbourhood attention, ...), rather than leaving it silently unperturbed.

The "interpretable" variants (iAT, iVAT) restrict the perturbation of sample ``b`` to the span of
its normalised attention differences to the other samples of the batch,
``d_bc = (a_b - a_c) / ||a_b - a_c||_2`` (``D_b``, ``M x (B - 1)``), and choose the weights ``alpha``
adversarially as Sato et al. (2018, iAdvT-Text) do for word embeddings::

    r_b = eps * D_b alpha_b / ||D_b alpha_b||_2,   alpha_b = D_b^T g_b  (iAT)

Ledger (every place where attnzoo, the papers and the official code differ, or attnzoo guessed).
Sources read: both papers' abstracts and the official AT/iAT code; the papers' full equations were not
available here, so the formulas above are Miyato et al.'s / Sato et al.'s as the papers cite them, and
each detail below that the code does not fix is a guess:

- Official code (shunk031/attention-meets-perturbation, ``amep/modules/attention_layer/bc/advt.py``)
  has one additive attention over the words of a sentence; here the perturbed unit is every
  shared-kernel call of any depth and head count, normalised per sample over heads x queries x keys
  of that call (per call, not jointly over layers: a guess; the papers have a single layer). Inside
  windowed or grouped kernels a "sample" is one window or group (the first axis the kernel passes).
- iAT differences: the official code forms ``a_i - a_j`` between the attention vectors of the
  samples ``i, j`` of the mini-batch (followed here; the papers' "differences in the attention of the
  sentences"). It normalises them with ``F.normalize(., dim=1)``, i.e. over ``j``; attnzoo normalises
  each difference over the score axis, as the paper's unit direction vectors require (a guess that
  the official axis is a slip). Masked and non-finite scores count as 0 in the differences.
- iAT weights: as written, the official iAT adds ``xi * normalize(-grad_a L)`` (the gradient of its
  zero-valued ``d_var`` is the plain score gradient, and the sign is flipped), which is a descent
  direction and does not use the differences; attnzoo follows the papers' adversarial definition,
  ``alpha = D^T g`` (Sato et al.'s ``alpha = eps g_alpha / ||g_alpha||``), then renormalises
  ``D alpha`` to norm ``eps`` as the official code normalises its perturbation (Sato et al. leave
  ``||D alpha||`` free; the renormalisation is a guess that keeps ``eps`` comparable with AT).
- Official AT calls ``zero_grad()`` and backpropagates the first (probe) loss into the parameters,
  where the trainer's later backward adds to it (so parameters see about ``2 grad L + lambda grad
  L_adv``); attnzoo takes the probe gradient with respect to the perturbation only
  (``torch.autograd.grad``), so the parameters see ``grad L_total`` as the paper's loss states.
  The clean forward doubles as the probe, so a step costs two forwards (the official code runs three).
- ``r_adv`` and ``r_vadv`` are constants (no gradient through their construction), as in
  Miyato et al. and the official code. A sample whose (projected) gradient vanishes gets ``r = 0``.
- VAT: ``p(y | x, a)`` is the softmax over the last axis of the model output (logits), held fixed
  (detached); ``D`` is averaged over all other axes. The random start is standard normal, masked keys
  zeroed. iVAT runs the same power iteration restricted to the differences' span (each iterate is
  replaced by ``D_b D_b^T d_b`` before it is normalised); the equations of the iVAT paper could not be
  read here (only its abstract), so this is a guess, as is every iAT/VAT detail the official code
  does not show (it has no VAT code).
- Defaults: ``lam=1`` as the official ``lam_adv``; the official ``xi`` (attnzoo's ``eps``) has no
  default there, attnzoo's ``eps=1`` is a guess to tune (on validation data); VAT ``xi=1e-6`` and
  ``n_power=1`` are Miyato et al.'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.capture import capture, current_module
from attnzoo.checks import check_bool, check_float, check_int
from attnzoo.families import Mechanism
from attnzoo.training.hook import PerturbationError, score_perturbation

__all__ = [
    "AdversarialLoss",
    "Site",
    "attention_adversarial_loss",
    "attention_vat_loss",
    "score_gradients",
]

Run = Callable[[], torch.Tensor]
LossFn = Callable[[torch.Tensor], torch.Tensor]
_Add = Callable[[int, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class Site:
    """One perturbed call of the shared softmax kernel.

    Attributes:
        module: path of the innermost attnzoo mechanism that made the call (``"<unnamed>"`` outside).
        scores: the clean masked scores, detached, ``(B, h, N_q, N_k)``.
        allowed: bool mask broadcastable to ``scores``, True where a key may be attended, or ``None``.
        delta: the perturbation added to the scores in that forward, same shape as ``scores``.
    """

    module: str
    scores: torch.Tensor
    allowed: torch.Tensor | None
    delta: torch.Tensor


@dataclass
class AdversarialLoss:
    """What :func:`attention_adversarial_loss` and :func:`attention_vat_loss` return.

    Attributes:
        total: the training loss, ``clean + lam * perturbed`` (VAT without labels: ``lam * perturbed``).
        clean: the loss of the clean forward (``None`` for VAT without ``loss_fn``).
        perturbed: the loss with the adversarial perturbation (AT), or ``KL(p || p_perturbed)`` (VAT).
        output: the clean forward's output (e.g. logits).
        perturbed_output: the output of the forward with the final perturbation.
        perturbations: the perturbation of each kernel call, in call order, detached.
        sites: the kernel calls of the clean forward.
    """

    total: torch.Tensor
    clean: torch.Tensor | None
    perturbed: torch.Tensor
    output: torch.Tensor
    perturbed_output: torch.Tensor
    perturbations: list[torch.Tensor]
    sites: list[Site]


def _check_callables(model: object, run: object, loss_fn: object, *, loss_optional: bool = False) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(run):
        raise TypeError(f"run must be a callable returning the model output, got {type(run).__name__}")
    if not callable(loss_fn) and not (loss_optional and loss_fn is None):
        raise TypeError(
            f"loss_fn must be a callable mapping the output to a loss, got {type(loss_fn).__name__}"
        )


def _unreached(model: nn.Module, reached: set[int]) -> list[str]:
    """Attnzoo mechanisms of ``model`` none of whose modules made a perturbed kernel call."""
    missing = []
    for path, module in model.named_modules():
        if isinstance(module, Mechanism) and not {id(m) for m in module.modules()} & reached:
            missing.append(f"{path or type(model).__name__} ({module.card.name})")
    return missing


def _forward(
    model: nn.Module, run: Run, add: _Add, *, expect: list[Site] | None = None
) -> tuple[torch.Tensor, list[Site]]:
    """Run ``run()`` under a capture of ``model``, adding ``add(i, scores, allowed)`` to the scores of
    the ``i``-th kernel call. Without ``expect`` (a first forward) every attnzoo mechanism of
    ``model`` must be reached; with it, the calls must match ``expect`` in number and shape."""
    sites: list[Site] = []
    reached: set[int] = set()
    names = {id(m): n for n, m in model.named_modules()}

    def fn(i: int, scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        if expect is not None and (i >= len(expect) or expect[i].scores.shape != scores.shape):
            raise PerturbationError(
                f"kernel call {i} of this forward does not match the first forward's calls "
                f"({len(expect)} calls); the model must make the same attention calls on every forward"
            )
        module = current_module()
        if module is not None:
            reached.add(id(module))
        delta = add(i, scores, allowed)
        sites.append(Site(names.get(id(module), "<unnamed>"), scores.detach(), allowed, delta))
        return scores + delta

    with capture(model), score_perturbation(fn):
        out = run()
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"run must return a tensor (the model output), got {type(out).__name__}")
        if expect is None:
            missing = _unreached(model, reached)
            if not sites or missing:
                what = ", ".join(missing) if missing else type(model).__name__
                raise PerturbationError(
                    f"attention perturbation cannot reach {what}: it forms no softmax scores through "
                    "attnzoo.kernels.attention, so attention AT/VAT would leave it unperturbed; only "
                    "mechanisms computing softmax(Q K^T) through the shared kernel can be wrapped "
                    "(e.g. mhsa, moh_attention, sliding_window, agent_attention)"
                )
        elif len(sites) != len(expect):
            raise PerturbationError(
                f"this forward made {len(sites)} attention kernel calls, the first forward {len(expect)}"
            )
    return out, sites


def _fixed(rs: list[torch.Tensor]) -> _Add:
    """Add ``rs[i]`` to the scores of the ``i``-th kernel call."""

    def add(i: int, scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        return rs[i]

    return add


def _view_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of ``t (B, ...)``, shaped to broadcast against it."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _unit(t: torch.Tensor) -> torch.Tensor:
    """``t / ||t||`` per sample (first axis); a sample of norm 0 stays 0."""
    return t / _view_norm(t).clamp_min(torch.finfo(t.dtype).tiny)


def _masked(t: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    return t if allowed is None else t.masked_fill(~allowed, 0.0)


def _differences(site: Site) -> torch.Tensor:
    """``(B, B, M)`` unit differences ``d_bc = (a_b - a_c) / ||a_b - a_c||`` of the flattened
    allowed scores (``M = h * N_q * N_k``; ``d_bb = 0``)."""
    if site.scores.shape[0] < 2:
        raise ValueError(
            "interpretable=True needs at least 2 samples per kernel call (the iAT directions "
            f"are differences between samples), got scores of shape {tuple(site.scores.shape)}"
        )
    finite = torch.isfinite(site.scores)
    keep = finite if site.allowed is None else finite & site.allowed
    a = torch.where(keep, site.scores, torch.zeros((), dtype=site.scores.dtype)).flatten(1)
    return _unit(a.unsqueeze(1) - a.unsqueeze(0))


def _project(site: Site, g: torch.Tensor) -> torch.Tensor:
    """``D_b D_b^T g_b`` per sample: ``g`` restricted to the span of the sample differences."""
    d = _differences(site)
    alpha = torch.einsum("bcm,bm->bc", d, g.flatten(1))
    return torch.einsum("bc,bcm->bm", alpha, d).view_as(g)


def _direction(site: Site, g: torch.Tensor, interpretable: bool) -> torch.Tensor:
    """Unit direction (per sample) of ``g`` on the allowed keys, projected for iAT/iVAT."""
    g = _masked(g, site.allowed)
    if interpretable:
        g = _masked(_project(site, g), site.allowed)
    return _unit(g)


def score_gradients(
    model: nn.Module, run: Run, loss_fn: LossFn
) -> tuple[torch.Tensor, torch.Tensor, list[Site], list[torch.Tensor]]:
    """The clean loss and the gradient of that loss with respect to the scores of every kernel call.

    Returns ``(loss, output, sites, grads)``; ``grads[i]`` has the shape of ``sites[i].scores``
    (``0`` at masked keys). ``loss`` keeps its graph, so it can be part of a training loss.
    """
    _check_callables(model, run, loss_fn)

    def zero(i: int, scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros_like(scores, requires_grad=True)

    out, sites = _forward(model, run, zero)
    loss = loss_fn(out)
    grads = torch.autograd.grad(loss, [s.delta for s in sites], retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(s.scores) if g is None else g for s, g in zip(sites, grads)]
    return loss, out, sites, list(grads)


def attention_adversarial_loss(
    model: nn.Module,
    run: Run,
    loss_fn: LossFn,
    *,
    epsilon: float = 1.0,
    lam: float = 1.0,
    interpretable: bool = False,
) -> AdversarialLoss:
    """Attention AT (or iAT with ``interpretable=True``): ``L(a) + lam * L(a + r_adv)``.

    Args:
        model: the module whose attnzoo mechanisms are perturbed (names the sites; all of its
            mechanisms must form scores through the shared kernel, else ``PerturbationError``).
        run: runs the forward, e.g. ``lambda: model(x)``; called twice, so it must make the same
            kernel calls each time.
        loss_fn: maps the output to a scalar loss, e.g. ``lambda logits: F.cross_entropy(logits, y)``.
        epsilon: norm of the perturbation of each call's scores per sample (>= 0).
        lam: weight of the adversarial loss (>= 0).
        interpretable: iAT: perturb along the differences between the samples' attention.
    """
    epsilon = check_float(epsilon, "epsilon", minimum=0.0)
    lam = check_float(lam, "lam", minimum=0.0)
    interpretable = check_bool(interpretable, "interpretable")
    clean, out, sites, grads = score_gradients(model, run, loss_fn)
    rs = [epsilon * _direction(s, g.detach(), interpretable) for s, g in zip(sites, grads)]
    out_adv, _ = _forward(model, run, _fixed(rs), expect=sites)
    perturbed = loss_fn(out_adv)
    return AdversarialLoss(clean + lam * perturbed, clean, perturbed, out, out_adv, rs, sites)


def _kl(p_log: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(p || softmax(logits))`` over the last axis, averaged over the others."""
    q_log = torch.log_softmax(logits, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


def attention_vat_loss(
    model: nn.Module,
    run: Run,
    loss_fn: LossFn | None = None,
    *,
    epsilon: float = 1.0,
    lam: float = 1.0,
    xi: float = 1e-6,
    n_power: int = 1,
    interpretable: bool = False,
    generator: torch.Generator | None = None,
) -> AdversarialLoss:
    """Attention VAT (or iVAT with ``interpretable=True``): ``L_sup + lam * KL(p || p(a + r_vadv))``.

    Args:
        model, run: as for :func:`attention_adversarial_loss`; ``run`` is called ``n_power + 2`` times
            and its output's last axis holds the logits of ``p(y | x)``.
        loss_fn: supervised loss of the clean output, or ``None`` for unlabeled data (then
            ``total = lam * KL``).
        epsilon: norm of ``r_vadv`` per sample and kernel call (>= 0).
        lam: weight of the VAT term (>= 0).
        xi: finite-difference radius of the power iteration (> 0).
        n_power: power iterations (>= 1).
        interpretable: iVAT: iterate in the span of the differences between the samples' attention.
        generator: random source of the power iteration's start.
    """
    _check_callables(model, run, loss_fn, loss_optional=True)
    epsilon = check_float(epsilon, "epsilon", minimum=0.0)
    lam = check_float(lam, "lam", minimum=0.0)
    xi = check_float(xi, "xi", positive=True)
    n_power = check_int(n_power, "n_power")
    interpretable = check_bool(interpretable, "interpretable")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    out, sites = _forward(model, run, lambda i, scores, allowed: torch.zeros_like(scores))
    p_log = torch.log_softmax(out.detach(), dim=-1)
    ds = [torch.randn(s.scores.shape, generator=generator, dtype=s.scores.dtype) for s in sites]
    ds = [d.to(s.scores.device) for s, d in zip(sites, ds)]
    for _ in range(n_power):
        leaves = [(xi * _direction(s, d, interpretable)).requires_grad_(True) for s, d in zip(sites, ds)]
        out_d, _ = _forward(model, run, _fixed(leaves), expect=sites)
        grads = torch.autograd.grad(_kl(p_log, out_d), leaves, allow_unused=True)
        ds = [torch.zeros_like(s.scores) if g is None else g for s, g in zip(sites, grads)]
    rs = [epsilon * _direction(s, d, interpretable) for s, d in zip(sites, ds)]
    out_adv, _ = _forward(model, run, _fixed(rs), expect=sites)
    vat = _kl(p_log, out_adv)
    clean = loss_fn(out) if loss_fn is not None else None
    total = lam * vat if clean is None else clean + lam * vat
    return AdversarialLoss(total, clean, vat, out, out_adv, rs, sites)
