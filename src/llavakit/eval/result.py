"""What an evaluation run returns: metrics overall and per group, the records, the skips, a table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from llavakit.eval.metrics import COUNT_METRICS, Metrics


@dataclass
class EvalResult:
    """Metrics of one task over one question set.

    `groups[field][value]` holds the metrics of the questions whose `field` (category, POPE
    strategy, ...) has that value. `records` are the rows of the predictions file; `skipped`
    lists `{"id", "reason"}` of questions left out (a bad image under `on_bad_image="skip"`),
    which no metric counts.
    """

    task: str
    metrics: Metrics
    groups: dict[str, dict[str, Metrics]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    predictions_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything but the records, JSON-ready (the records are in the predictions file)."""
        return {
            "task": self.task,
            "metrics": self.metrics,
            "groups": self.groups,
            "num_skipped": len(self.skipped),
            "skipped": self.skipped,
            "predictions": str(self.predictions_path) if self.predictions_path else None,
        }

    def table(self, title: str | None = None) -> Table:
        """A rich table: one row overall, then one per group value; fractions shown as percentages."""
        names = [name for name in self.metrics if name != "n"]
        table = Table(title=title or f"{self.task} evaluation")
        table.add_column("questions")
        table.add_column("n", justify="right")
        for name in names:
            table.add_column(name, justify="right")
        table.add_row("all", *_cells(self.metrics, names))
        for field_name, values in self.groups.items():
            table.add_section()
            for value, metrics in values.items():
                table.add_row(f"{field_name}: {value}", *_cells(metrics, names))
        if self.skipped:
            table.caption = f"{len(self.skipped)} question(s) skipped: " + "; ".join(
                f"{item['id']} ({item['reason']})" for item in self.skipped[:3]
            ) + (" ..." if len(self.skipped) > 3 else "")
        return table


def _cells(metrics: Metrics, names: list[str]) -> list[str]:
    cells = [str(int(metrics.get("n", 0)))]
    for name in names:
        value = metrics.get(name)
        if value is None:
            cells.append("-")
        elif name in COUNT_METRICS:
            cells.append(str(int(value)))
        else:
            cells.append(f"{100 * value:.2f}")
    return cells
