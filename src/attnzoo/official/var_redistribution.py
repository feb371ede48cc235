"""Official VAR format: ``src/logic/logic.py`` of seilk/VisAttnSink (DimProspector, HeadFork,
VARProcessor.attn_redist), driven for one decoder layer as in ``src/model/llava.py``.

No parameters. The constructor carries the ``LogicEngine.activate`` hyper-parameters (``tau``,
``rho``, ``summ``, ``p``, ``except_last_layer`` — shadowed and without effect in the official
code — and ``layer``) plus ``dim_sink`` and ``num_hidden_layers``; the forward kwargs give the
image span and ``output_token_count`` (negative at prefill). Outputs, in the official order: the
sink token positions (``int64``), the selected ``(batch, head, query)`` rows (``int64 (n, 3)``) and
the redistributed map.
"""

from __future__ import annotations

from typing import Any

import torch

from attnzoo.inference.var import LLAMA2_7B_SINK_DIMS, VisualAttentionRedistribution
from attnzoo.official import CheckpointError, Conversion, Signature, adapter


def _call(
    module: VisualAttentionRedistribution,
    hidden_states: torch.Tensor,
    attn_weights: torch.Tensor,
    image_start: int,
    image_len: int,
    output_token_count: int = -1,
    layer_idx: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if hidden_states.shape[0] != 1:
        raise ValueError("the official VAR code supports batch 1 only (it concatenates sinks over the batch)")
    sinks, rows, out = module(hidden_states, attn_weights, int(image_start), int(image_len))
    return torch.nonzero(sinks[0])[:, 0], torch.nonzero(rows), out


VAR = Signature(
    tau=(float, 20.0),
    rho=(float, 0.5),
    summ=(float, 0.2),
    p=(float, 0.6),
    except_last_layer=(int | bool, 1),
    layer=(str | int, "all"),
    dim_sink=(list, LLAMA2_7B_SINK_DIMS),
    num_hidden_layers=(int, 32),
)


@adapter("var_redistribution", {"VARProcessor": VAR})
def load_var_redistribution(kw: dict[str, Any], symbol: str) -> Conversion:
    if kw["layer"] != "all":
        raise CheckpointError.argument(
            "layer",
            f"layer={kw['layer']!r}: only layer='all' (per-layer sink detection) is supported; the official "
            "single-layer mode reuses one layer's sinks everywhere, which attnzoo expresses by passing "
            "those sinks to apply()",
        )
    module = VisualAttentionRedistribution(
        kw["dim_sink"], tau=kw["tau"], rho=kw["rho"], summ=kw["summ"], p=kw["p"]
    )
    return Conversion(module, _call)
