"""What an evaluation run returns: metrics overall and per group, the scored records, the skips."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavakit.eval.metrics import Metrics


@dataclass
class EvalResult:
    """Metrics of one task over one question set.

    `metrics` holds the task's metrics (see `llavakit.eval.metrics`), `n`, and the
    baselines `chance` and `majority` (accuracies; see `questions.baselines`) where the
    questions allow them. `groups[field][value]` holds the same for the questions whose
    `field` (category, POPE strategy) has that value. `records` are the rows of the
    predictions file; `skipped` lists `{"id", "reason"}` of the questions left out (a bad
    image under `on_bad_image="skip"`), which no metric counts.
    """

    name: str
    task: str
    metrics: Metrics
    groups: dict[str, dict[str, Metrics]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    predictions_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything but the records, JSON-ready (the records are in the predictions file)."""
        return {
            "name": self.name,
            "task": self.task,
            "metrics": self.metrics,
            "groups": self.groups,
            "num_skipped": len(self.skipped),
            "skipped": self.skipped,
            "predictions": str(self.predictions_path) if self.predictions_path else None,
        }
