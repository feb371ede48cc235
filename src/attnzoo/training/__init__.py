"""Training utilities for attention mechanisms: adversarial (AT, iAT) and virtual adversarial (VAT,
iVAT) perturbations of attention scores (Kitada & Iyatomi 2021, 2022), for any model whose
mechanisms form their softmax scores through :mod:`attnzoo.kernels.attention`.

Usage::

    from attnzoo.training import attention_adversarial_loss, attention_vat_loss

    step = attention_adversarial_loss(model, lambda: model(x), lambda out: F.cross_entropy(out, y),
                                      epsilon=1.0, lam=1.0)
    step.total.backward()

``python -m attnzoo.training.demo`` trains a small ViT on ``digits`` with and without them.
"""

from attnzoo.training.adversarial import (
    AdversarialLoss,
    Site,
    attention_adversarial_loss,
    attention_vat_loss,
    score_gradients,
)
from attnzoo.training.hook import PerturbationError, perturbing, score_perturbation

__all__ = [
    "AdversarialLoss",
    "PerturbationError",
    "Site",
    "attention_adversarial_loss",
    "attention_vat_loss",
    "perturbing",
    "score_gradients",
    "score_perturbation",
]
