"""Attention analysis: metrics on captured attention, head attribution, plots, ``attnzoo analyze``.

Capture attention with :func:`attnzoo.capture` (attnzoo modules, and Hugging Face ``transformers``
models run with eager attention or an ``attnzoo_*`` implementation of :mod:`attnzoo.integrations.hf`,
see :data:`attnzoo.analysis.hf.PROBABILITY_IMPLEMENTATIONS`), then measure it::

    from attnzoo.analysis import attention_entropy, sink_mass, METRICS
    with attnzoo.capture(model) as cap:
        model(**batch)
    probs = cap[cap.names()[0]][0].probs          # (B, h, N, N)
    attention_entropy(probs, batch["attention_mask"].bool())
    print(METRICS["waad"].definition, METRICS["waad"].paper)

``transformers`` is only imported when a ``transformers`` model is captured or edited.

Circuit analyses act on per-head sites (:mod:`attnzoo.analysis.hooks`) of attnzoo's ``mhsa``,
``transformers`` and TransformerLens models: :func:`activation_patching` and :func:`path_patching`
(:mod:`attnzoo.analysis.patching`), :func:`search_circuit` and :func:`compare_circuits` (Merullo et
al. 2023, :mod:`attnzoo.analysis.circuits`), :func:`graph_attention` on graph-structured prompts
(Guan et al. 2025, :mod:`attnzoo.analysis.graph`), :func:`arithmetic_heads` and
:func:`precise_finetune` (Zhang et al. 2024, :mod:`attnzoo.analysis.arithmetic`)::

    from attnzoo.analysis import ioi_prompts, path_patching
    result = path_patching(model, ioi_prompts(100), receivers="logits")
    result.ranking()[:3]                            # [((layer, head), effect), ...]
"""

from attnzoo.analysis.arithmetic import addition_prompts, arithmetic_heads, precise_finetune, precise_masks
from attnzoo.analysis.attribution import ablate_heads, attention_heads, head_importance, ships
from attnzoo.analysis.circuits import (
    Circuit,
    compare_circuits,
    intervene_heads,
    role_attention,
    search_circuit,
)
from attnzoo.analysis.graph import graph_attention, graph_attention_metrics, graph_prompts
from attnzoo.analysis.hf import edit_heads
from attnzoo.analysis.hooks import HookError, attention_layers, head_hooks, head_parameter_masks
from attnzoo.analysis.metrics import (
    METRICS,
    MetricCard,
    attention_entropy,
    attention_received,
    future_attention_influence,
    head_redundancy,
    head_similarity,
    mean_attention_distance,
    metric_card,
    sink_mass,
    sink_rate,
    top_sinks,
    windowed_average_attention_distance,
)
from attnzoo.analysis.patching import PatchResult, activation_patching, logit_difference, path_patching
from attnzoo.analysis.plots import metric_table, plot_head_grid, plot_head_heatmaps, plot_sink_bars
from attnzoo.analysis.templates import ContrastPrompts, colored_objects_prompts, ioi_prompts

__all__ = [
    "METRICS",
    "Circuit",
    "ContrastPrompts",
    "HookError",
    "MetricCard",
    "PatchResult",
    "ablate_heads",
    "activation_patching",
    "addition_prompts",
    "arithmetic_heads",
    "attention_entropy",
    "attention_heads",
    "attention_layers",
    "attention_received",
    "colored_objects_prompts",
    "compare_circuits",
    "edit_heads",
    "future_attention_influence",
    "graph_attention",
    "graph_attention_metrics",
    "graph_prompts",
    "head_hooks",
    "head_importance",
    "head_parameter_masks",
    "head_redundancy",
    "head_similarity",
    "intervene_heads",
    "ioi_prompts",
    "logit_difference",
    "mean_attention_distance",
    "metric_card",
    "metric_table",
    "path_patching",
    "plot_head_grid",
    "plot_head_heatmaps",
    "plot_sink_bars",
    "precise_finetune",
    "precise_masks",
    "role_attention",
    "search_circuit",
    "ships",
    "sink_mass",
    "sink_rate",
    "top_sinks",
    "windowed_average_attention_distance",
]
