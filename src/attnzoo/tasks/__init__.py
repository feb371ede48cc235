"""Task-quality evaluation: seeded tasks that run on a CPU in minutes, a fixed-budget training
runner and a report that puts quality next to the benchmark's cost (``attnzoo eval``).

Usage::

    from attnzoo.tasks import run_eval, write_results
    doc = run_eval("mqar", ["mhsa", "based"], preset="cpu")
    write_results(doc, "reports/eval/mqar")
"""

from attnzoo.tasks.catalog import TASKS, Budget, Preset, TaskSpec, get_task, list_tasks
from attnzoo.tasks.data import IGNORE, TaskData
from attnzoo.tasks.report import (
    bench_latency,
    markdown_table,
    pareto_front,
    repeat_command,
    selection_split,
    summarise,
    write_results,
)
from attnzoo.tasks.runner import build_model, evaluate, measure, run_eval, train_one

__all__ = [
    "IGNORE",
    "TASKS",
    "Budget",
    "Preset",
    "TaskData",
    "TaskSpec",
    "bench_latency",
    "build_model",
    "evaluate",
    "get_task",
    "list_tasks",
    "markdown_table",
    "measure",
    "pareto_front",
    "repeat_command",
    "run_eval",
    "selection_split",
    "summarise",
    "train_one",
    "write_results",
]
