"""Bad samples met during training: counted, checked against a share, reported at the end.

The dataset turns a sample it cannot use (missing or corrupt image, over-long, malformed
turns, ...) into `{"skipped": reason, "sample_id": id}`; the collators move those into the
batch under `skipped_samples`. The trainer pops that key before the forward pass and hands
it here. Above `max_fraction` of the samples drawn so far (checked once `min_samples` have
been drawn, and once more at the end) the run stops with `TooManyBadSamplesError`, naming
the count: a broken image folder should not cost a night of training on the remaining few.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPORT_NAME = "skipped_samples.json"


class TooManyBadSamplesError(ValueError):
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

    def check(self, seen: int, skipped: int, final: bool = False) -> None:
        """Raise `TooManyBadSamplesError` when `skipped / seen` is over the share.

        Checked once `min_samples` were seen, and at the end.
        """
        if seen == 0 or (seen < self.min_samples and not final):
            return
        if skipped / seen > self.max_fraction:
            raise TooManyBadSamplesError(
                f"{skipped} of {seen} samples were skipped as bad ({skipped / seen:.1%}), more than "
                f"data.max_skipped_fraction={self.max_fraction}; run `llavakit data check` on the data, "
                "or raise data.max_skipped_fraction"
            )


__all__ = ["REPORT_NAME", "SkipPolicy", "SkipReport", "TooManyBadSamplesError"]
