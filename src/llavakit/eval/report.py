"""Tables of evaluation results: rich for the terminal, markdown for READMEs.

Fractions print as percentages with one decimal. Every row carries the set's baselines
beside its accuracy, so a number can be read against chance (uniform guessing) and the
majority answer (always the most common answer of the question's category).
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.table import Table

from llavakit.eval.metrics import COUNT_METRICS, Metrics
from llavakit.eval.result import EvalResult

BASELINES = ("chance", "majority")
# Shown in their own columns by `results_table` / `results_markdown`; the rest go in "more".
_MAIN = ("n", "accuracy", *BASELINES)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _rows(result: EvalResult) -> list[tuple[str, Metrics]]:
    """(label, metrics): the whole set, then each group ("colour", "strategy: random")."""
    rows = [("all", result.metrics)]
    for field_name, values in result.groups.items():
        for value, metrics in values.items():
            rows.append((value if field_name == "category" else f"{field_name}: {value}", metrics))
    return rows


def _more(metrics: Metrics) -> str:
    """The metrics without a column of their own, e.g. "f1 80.0, precision 75.0"."""
    names = [name for name in metrics if name not in _MAIN and name not in COUNT_METRICS]
    return ", ".join(f"{name} {_percent(metrics[name])}" for name in names)


def _skip_note(results: Mapping[str, EvalResult]) -> str | None:
    notes = []
    for name, result in results.items():
        if result.skipped:
            shown = "; ".join(f"{item['id']}: {item['reason']}" for item in result.skipped[:3])
            more = " ..." if len(result.skipped) > 3 else ""
            notes.append(f"{name}: {len(result.skipped)} question(s) skipped ({shown}{more})")
    return "\n".join(notes) if notes else None


def results_table(results: Mapping[str, EvalResult], title: str = "Evaluation") -> Table:
    """One rich table over several sets: a row per set and per group, accuracy beside its baselines."""
    table = Table(title=title)
    for name, justify in (
        ("set", "left"),
        ("questions", "left"),
        ("n", "right"),
        ("accuracy", "right"),
        ("chance", "right"),
        ("majority", "right"),
        ("more", "left"),
    ):
        table.add_column(name, justify=justify)
    for index, (name, result) in enumerate(results.items()):
        if index:
            table.add_section()
        for label, metrics in _rows(result):
            table.add_row(
                name if label == "all" else "",
                label,
                str(int(metrics.get("n", 0))),
                _percent(metrics.get("accuracy")),
                *(_percent(metrics.get(baseline)) for baseline in BASELINES),
                _more(metrics),
            )
    table.caption = _skip_note(results)
    return table


def results_markdown(results: Mapping[str, EvalResult]) -> str:
    """The same rows as `results_table`, as a GitHub markdown table (percentages)."""
    lines = [
        "| set | questions | n | accuracy | chance | majority | more |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, result in results.items():
        for label, metrics in _rows(result):
            cells = [
                name if label == "all" else "",
                label,
                str(int(metrics.get("n", 0))),
                _percent(metrics.get("accuracy")),
                *(_percent(metrics.get(baseline)) for baseline in BASELINES),
                _more(metrics),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    note = _skip_note(results)
    if note:
        lines += ["", *(f"{line}  " for line in note.splitlines())]
    return "\n".join(lines) + "\n"


def result_table(result: EvalResult) -> Table:
    """One set in full: every metric of its task as a column (counts as whole numbers)."""
    names = [name for name in result.metrics if name != "n"]
    table = Table(title=f"{result.name} ({result.task})")
    table.add_column("questions")
    table.add_column("n", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for label, metrics in _rows(result):
        cells = [str(int(metrics.get("n", 0)))]
        for name in names:
            value = metrics.get(name)
            cells.append(str(int(value)) if name in COUNT_METRICS and value is not None else _percent(value))
        table.add_row(label, *cells)
    table.caption = _skip_note({result.name: result})
    return table
