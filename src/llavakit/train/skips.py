"""Bad samples met during training: counted, checked against a share, reported at the end.

The dataset turns a sample it cannot use (missing or corrupt image, over-long, malformed
turns, ...) into `{"skipped": reason, "sample_id": id}`; the collators move those into the
batch under `skipped_samples`. The trainer pops that key before the forward pass and hands
it here. The run stops with `TooManyBadSamplesError`, naming the count, as soon as the share
is provably over `max_fraction`: once the skipped count exceeds that share of every sample the
run will draw (its optimizer steps x global batch, known before the first step), whatever the
rest holds; also above `max_fraction` of the samples drawn so far once `min_samples` have been
drawn, and at the end. A broken image folder should not cost a night (or an epoch) of training.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from llavakit.errors import DataError

REPORT_NAME = "skipped_samples.json"
_ADVICE = "run `llavakit data check` on the data, or raise data.max_skipped_fraction"


class TooManyBadSamplesError(DataError):
    """More than the allowed share of samples was skipped."""


@dataclass
class SkipReport:
    """Samples drawn and the skipped ones, as (sample_id, reason) pairs."""

    seen: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def fraction(self) -> float:
        return self.num_skipped / self.seen if self.seen else 0.0

    def reasons(self) -> Counter:
        """Skipped samples per category (the part of the reason before the first colon)."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.skipped)

    def summary(self, examples: int = 5) -> str:
        if not self.skipped:
            return f"no bad samples among {self.seen} drawn"
        lines = [f"{self.num_skipped} of {self.seen} samples skipped ({self.fraction:.2%})"]
        lines += [f"  {category}: {count}" for category, count in sorted(self.reasons().items())]
        lines += [f"  e.g. {sample_id}: {reason}" for sample_id, reason in self.skipped[:examples]]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"seen": self.seen, "skipped": [list(pair) for pair in self.skipped]}

    @classmethod
    def from_dict(cls, data: dict) -> SkipReport:
        return cls(int(data["seen"]), [(str(a), str(b)) for a, b in data["skipped"]])

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / REPORT_NAME
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SkipReport | None:
        path = Path(directory) / REPORT_NAME
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None

    @classmethod
    def merge(cls, reports: Iterable[SkipReport]) -> SkipReport:
        merged = cls()
        for report in reports:
            merged.seen += report.seen
            merged.skipped += report.skipped
        return merged


@dataclass
class SkipPolicy:
    """How many bad samples a run tolerates."""

    max_fraction: float = 0.01
    min_samples: int = 1000

    def check(self, seen: int, skipped: int, final: bool = False, planned: int | None = None) -> None:
        """Raise `TooManyBadSamplesError` when the bad share is over `max_fraction`, or will be.

        `planned`: the most samples the whole run draws; more than `max_fraction` of it skipped
        already means the final share is over, however many samples are still to come. The share
        so far is judged once `min_samples` were seen, and at the end (`final`).
        """
        if planned is not None and skipped > self.max_fraction * planned:
            raise TooManyBadSamplesError(
                f"{skipped} of the {seen} samples drawn so far were skipped as bad: more than "
                f"data.max_skipped_fraction={self.max_fraction} of the at most {planned} samples this run draws, "
                f"whatever the rest hold; {_ADVICE}"
            )
        if seen == 0 or (seen < self.min_samples and not final):
            return
        if skipped / seen > self.max_fraction:
            raise TooManyBadSamplesError(
                f"{skipped} of {seen} samples were skipped as bad ({skipped / seen:.1%}), more than "
                f"data.max_skipped_fraction={self.max_fraction}; {_ADVICE}"
            )


__all__ = ["REPORT_NAME", "SkipPolicy", "SkipReport", "TooManyBadSamplesError"]
