"""Official Zoology format: ``zoology/mixers/based.py::Based`` (HazyResearch/zoology).

Keys ``proj_q.weight (h*d, C)``, ``proj_k.weight (h*d, C)``, ``proj_v.weight (h*d_v, C)`` and
``proj_o.weight (C, h*d_v)`` map one to one onto :class:`BasedAttention`, with ``d = feature_dim``
and ``d_v = d_model // num_key_value_heads`` (floor). ``train_view`` ('linear' or 'quadratic') does
not change the function; ``l_max`` and ``rope_theta`` do not either. Only the configurations the
official pure-PyTorch path runs are accepted: ``taylor_exp`` feature map without feature kwargs,
no rotary embeddings and ``num_heads == num_key_value_heads``.
"""

from __future__ import annotations

from typing import Any

from attnzoo.mechanisms.token_mixer.based import BasedAttention
from attnzoo.official import CheckpointError, Choice, Conversion, Problem, Signature, adapter

BASED = Signature(
    d_model=int,
    l_max=(int, 2048),
    feature_dim=(int, 16),
    num_key_value_heads=(int, 12),
    num_heads=(int, 12),
    feature_name=(Choice("taylor_exp"), "taylor_exp"),
    feature_kwargs=(dict, {}),
    eps=(float, 1e-12),
    causal=(bool, True),
    apply_rotary=(Choice(False), False),
    rope_theta=(float, 10000.0),
    train_view=(Choice("linear", "quadratic"), "linear"),
)


@adapter("based", {"Based": BASED})
def load_based(kw: dict[str, Any], symbol: str) -> Conversion:
    problems = []
    if kw["num_key_value_heads"] != kw["num_heads"]:
        problems.append(
            Problem(
                "argument",
                "num_key_value_heads",
                f"num_key_value_heads={kw['num_key_value_heads']} must equal num_heads={kw['num_heads']} "
                "(the official non-rotary path has no repeat_kv)",
            )
        )
    if kw["feature_kwargs"]:
        problems.append(
            Problem("argument", "feature_kwargs", "feature_kwargs of TaylorExp are not supported")
        )
    if problems:
        raise CheckpointError(problems)
    module = BasedAttention(
        kw["d_model"],
        kw["num_heads"],
        kw["feature_dim"],
        head_dim=kw["d_model"] // kw["num_key_value_heads"],
        causal=kw["causal"],
        eps=kw["eps"],
    )
    return Conversion(module, lambda m, hidden_states: (m(hidden_states),))
