"""Small backbones with a pluggable attention mechanism, chosen by registered name.

============  ==========================  ===========================================
backbone      mechanism family            used by
============  ==========================  ===========================================
CausalLM      token_mixer (1-D, causal)   MQAR, recall, induction, copying, ListOps
ViTTiny       token_mixer (1-D or 2-D)    8x8 digits classification
SmallCNN      feature_map (2-D)           8x8 digits classification
MILClassifier pooling                     bags of digits
============  ==========================  ===========================================
"""

from attnzoo.models.blocks import MLP, MixerBlock
from attnzoo.models.build import WIDTH_KEYS, build_mechanism, mechanism_kwargs
from attnzoo.models.cnn import SmallCNN
from attnzoo.models.lm import CausalLM
from attnzoo.models.mil import MILClassifier
from attnzoo.models.vit import ViTTiny

__all__ = [
    "MLP",
    "WIDTH_KEYS",
    "CausalLM",
    "MILClassifier",
    "MixerBlock",
    "SmallCNN",
    "ViTTiny",
    "build_mechanism",
    "mechanism_kwargs",
]
