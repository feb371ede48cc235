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
"""

from attnzoo.analysis.attribution import ablate_heads, attention_heads, head_importance, ships
from attnzoo.analysis.hf import edit_heads
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
from attnzoo.analysis.plots import metric_table, plot_head_grid, plot_head_heatmaps, plot_sink_bars

__all__ = [
    "METRICS",
    "MetricCard",
    "ablate_heads",
    "attention_entropy",
    "attention_heads",
    "attention_received",
    "edit_heads",
    "future_attention_influence",
    "head_importance",
    "head_redundancy",
    "head_similarity",
    "mean_attention_distance",
    "metric_card",
    "metric_table",
    "plot_head_grid",
    "plot_head_heatmaps",
    "plot_sink_bars",
    "ships",
    "sink_mass",
    "sink_rate",
    "top_sinks",
    "windowed_average_attention_distance",
]
