"""A benchmark's results as a terminal table (rich), markdown and JSON, with the per-group breakdowns.

Fractions print as percentages with one decimal; a benchmark's raw metrics (MME's scores, the
judge's 1-10 scores) and counts print as numbers. Rows: the whole benchmark, then each value of
each breakdown field ("split: random", "category: conv").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from llavakit.eval.benchmarks.base import Benchmark, BenchmarkScore, Metrics
from llavakit.eval.metrics import COUNT_METRICS


@dataclass
class BenchmarkResult:
    """What one evaluation of a benchmark produced: the score, what was answered and left out, the files."""

    benchmark: Benchmark
    score: BenchmarkScore
    source: str
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def notes(self) -> list[str]:
        return self.score.notes

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-question records (those go to the scored-answers file), JSON-ready."""
        return {
            "task": self.benchmark.name,
            "title": self.benchmark.title,
            "source": self.source,
            "headline": self.benchmark.headline,
            "metrics": self.score.metrics,
            "groups": self.score.groups,
            "counts": self.counts,
            "notes": self.score.notes,
            "judge": self.score.judge,
            "files": self.files,
        }


def metric_text(name: str, value: float | None, benchmark: Benchmark) -> str:
    """A metric as a table shows it: a count, a raw number, or a percentage."""
    if value is None:
        return "-"
    if name in COUNT_METRICS:
        return str(int(value))
    if name in benchmark.raw_metrics:
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{100 * value:.1f}"


def _rows(score: BenchmarkScore) -> list[tuple[str, Metrics]]:
    rows = [("all", score.metrics)]
    for field_name, values in score.groups.items():
        rows += [(f"{field_name}: {value}", metrics) for value, metrics in values.items()]
    return rows


def _columns(score: BenchmarkScore) -> list[str]:
    """n first, then every metric in the order the rows first name them (other counts, such as POPE's
    tp / fp / tn / fn, stay in the JSON)."""
    names: list[str] = []
    for _, metrics in _rows(score):
        names += [name for name in metrics if name not in names and name not in COUNT_METRICS]
    return ["n", *names]


def benchmark_table(result: BenchmarkResult) -> Table:
    """The rich table: a row for the whole benchmark and per group value; the notes as its caption."""
    score, benchmark = result.score, result.benchmark
    table = Table(title=f"{benchmark.title} ({benchmark.name}) - {result.source}")
    table.add_column("questions")
    columns = _columns(score)
    for name in columns:
        table.add_column(name + (" *" if name == benchmark.headline else ""), justify="right")
    for label, metrics in _rows(score):
        table.add_row(label, *(metric_text(name, metrics.get(name), benchmark) for name in columns))
    table.caption = "\n".join(result.notes) or None
    return table


def benchmark_markdown(result: BenchmarkResult) -> str:
    """The same rows as a GitHub markdown table, the headline metric starred, the notes below."""
    score, benchmark = result.score, result.benchmark
    columns = _columns(score)
    header = ["questions", *(name + (" *" if name == benchmark.headline else "") for name in columns)]
    lines = [
        f"## {benchmark.title} ({benchmark.name})",
        "",
        f"{result.source}",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for label, metrics in _rows(score):
        lines.append("| " + " | ".join([label, *(metric_text(n, metrics.get(n), benchmark) for n in columns)]) + " |")
    if result.notes:
        lines += ["", *(f"- {note}" for note in result.notes)]
    return "\n".join(lines) + "\n"
