"""attnzoo inside the models people already run.

* :mod:`attnzoo.integrations.timm`: attnzoo mechanisms as timm attention layers (ViT blocks and
  CNN blocks) and :func:`~attnzoo.integrations.timm.swap` for already built timm models;
* :mod:`attnzoo.integrations.hf`: attnzoo attention functions registered with Hugging Face
  ``transformers``' ``AttentionInterface`` (``model.set_attn_implementation("attnzoo_mhsa")``);
* :mod:`attnzoo.integrations.export`: ``torch.export`` and ONNX export of every mechanism.

The submodules import their third-party package (``timm``, ``transformers``, ``onnx``) on first
use, so ``import attnzoo`` never needs them; install them with ``pip install attnzoo[integrations]``.
Every misuse raises :class:`IntegrationError`, whose message says which argument or model part is
wrong and why.
"""

from __future__ import annotations

__all__ = ["IntegrationError"]


class IntegrationError(ValueError):
    """A mechanism, model or argument that an integration cannot use; the message says why."""
