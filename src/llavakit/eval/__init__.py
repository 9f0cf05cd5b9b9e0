"""Benchmarks with their official metrics and a batched greedy runner.

- `vqa`, `pope`, `counting`: answer parsing and scoring as the benchmarks define them;
- `metrics`: the tasks (vqa, exact, counting, pope) and their aggregate metrics;
- `questions`: question files, task inference, chance / majority baselines;
- `runner`: `evaluate`, `evaluate_files`, `evaluate_main` (the `llavakit eval` command);
- `report`: rich and markdown tables.
"""

from llavakit.eval.metrics import TASKS, get_task, grouped_metrics, task_metrics
from llavakit.eval.report import result_table, results_markdown, results_table
from llavakit.eval.result import EvalResult
from llavakit.eval.runner import evaluate, evaluate_files, evaluate_main

__all__ = [
    "TASKS",
    "EvalResult",
    "evaluate",
    "evaluate_files",
    "evaluate_main",
    "get_task",
    "grouped_metrics",
    "result_table",
    "results_markdown",
    "results_table",
    "task_metrics",
]
