"""`llavakit data check`: every sample checked as training would check it, counted and reported.

Nothing is silently lost: the report lists every bad sample with its id and reason, and the
counts (samples, images, videos, tokens, answer tokens) are those of the good samples. Sample
ids that repeat within a dataset are listed as a warning (the samples are still checked and
counted: LLaVA-style data reuses an image's id for several conversations).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from llavakit.data.dataset import read_mixture
from llavakit.data.records import BadSampleError, DatasetSpec, encode_sample, image_paths, printable, video_paths
from llavakit.errors import ConfigError
from llavakit.processing.processor import IGNORE_INDEX, LlavaKitProcessor


@dataclass
class DatasetStats:
    """Counts for one dataset; images and tokens are those of its good samples."""

    name: str
    path: str
    records: int
    samples: int = 0
    good: int = 0
    images: int = 0
    videos: int = 0
    text_only: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    longest: int = 0

    @property
    def bad(self) -> int:
        return self.samples - self.good


@dataclass
class DataReport:
    """What `llavakit data check` prints: per-dataset counts and every bad sample with its reason."""

    datasets: list[DatasetStats]
    bad_samples: list[tuple[str, str]] = field(default_factory=list)
    max_length: int | None = None
    tokens_counted: bool = True
    duplicates: str = ""  # the warning line for sample ids that repeat within a dataset, if any

    def _total(self, name: str) -> int:
        return sum(getattr(stats, name) for stats in self.datasets)

    @property
    def num_samples(self) -> int:
        return self._total("samples")

    @property
    def num_good(self) -> int:
        return self._total("good")

    @property
    def num_images(self) -> int:
        return self._total("images")

    @property
    def num_videos(self) -> int:
        return self._total("videos")

    @property
    def num_text_only(self) -> int:
        return self._total("text_only")

    @property
    def num_tokens(self) -> int:
        return self._total("tokens")

    @property
    def num_answer_tokens(self) -> int:
        return self._total("answer_tokens")

    @property
    def num_bad(self) -> int:
        return len(self.bad_samples)

    def reasons(self) -> Counter:
        """Bad samples per category (the part of each reason before the first colon)."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.bad_samples)

    def render(self, width: int = 120) -> str:
        """The report as text tables (rich); what is not valid UTF-8 (file names, ids) is printed escaped."""
        console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
        counts = Table(title="datasets")
        columns = ["dataset", "records", "samples", "good", "bad", "images", "videos", "text-only"]
        if self.tokens_counted:
            columns += ["tokens", "answer tokens", "longest"]
        for column in columns:
            counts.add_column(column, justify="left" if column == "dataset" else "right")
        rows = [
            (
                s.name,
                s.records,
                s.samples,
                s.good,
                s.bad,
                s.images,
                s.videos,
                s.text_only,
                s.tokens,
                s.answer_tokens,
                s.longest,
            )
            for s in self.datasets
        ]
        if len(self.datasets) > 1:
            longest = max((s.longest for s in self.datasets), default=0)
            rows.append(
                (
                    "total",
                    self._total("records"),
                    self.num_samples,
                    self.num_good,
                    self._total("bad"),
                    self.num_images,
                    self.num_videos,
                    self.num_text_only,
                    self.num_tokens,
                    self.num_answer_tokens,
                    longest,
                )
            )
        for row in rows:
            counts.add_row(*(Text(printable(str(value))) for value in row[: len(columns)]))
        console.print(counts)
        if self.duplicates:
            console.print(f"warning: {self.duplicates}", markup=False, highlight=False)
        limit = f", max_length={self.max_length}" if self.max_length is not None else ""
        if not self.bad_samples:
            console.print(f"no bad samples{limit}", markup=False, highlight=False)
            return printable(console.file.getvalue())
        console.print(f"{self.num_bad} bad sample(s){limit}", markup=False, highlight=False)
        for category, count in sorted(self.reasons().items()):
            console.print(f"  {category}: {count}", markup=False, highlight=False)
        bad = Table(title="bad samples")
        bad.add_column("sample id", overflow="fold")
        bad.add_column("reason", overflow="fold")
        for sample_id, reason in self.bad_samples:
            bad.add_row(Text(printable(sample_id)), Text(printable(reason)))  # Text: `a.json[3]` is not markup
        console.print(bad)
        return printable(console.file.getvalue())

    def __str__(self) -> str:
        return self.render()


def load_processor(folder: str | Path) -> LlavaKitProcessor:
    """The processor saved in `folder` (a processor or checkpoint folder), or a `ConfigError` naming it."""
    if not Path(folder).is_dir():
        raise ConfigError(f"processor folder {folder} is not a folder (give a processor or checkpoint folder)")
    try:
        return LlavaKitProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"processor folder {folder} holds no usable llavakit processor: {error}") from error


def check_data(
    specs: Sequence[DatasetSpec], processor: LlavaKitProcessor | None, max_length: int | None, seed: int = 0
) -> DataReport:
    """Check every sample of the mixture as training would, and count samples, images, videos and tokens.

    Without a processor, structure, text, paths, images and videos are still checked (videos
    sampled with the default `FrameSampling`) but tokens are not counted, so `max_length`
    needs a processor (`ConfigError` otherwise, rather than a report that claims lengths were checked).
    """
    if max_length is not None and processor is None:
        raise ConfigError("max_length needs a processor: lengths are counted in the processor's tokens")
    if max_length is not None and max_length < 1:
        raise ConfigError(f"max_length must be at least 1, got {max_length}")
    specs = list(specs)
    mixture = read_mixture(specs, seed)
    stats = [DatasetStats(spec.name, str(spec.path), total) for spec, total in zip(specs, mixture.totals)]
    report = DataReport(stats, max_length=max_length, tokens_counted=processor is not None)
    report.duplicates = mixture.duplicates_summary()
    for entry in mixture.entries:
        spec, counts = specs[entry.spec_index], stats[entry.spec_index]
        counts.samples += 1
        try:
            encoded = encode_sample(entry.record, spec, processor, max_length)
        except BadSampleError as error:
            report.bad_samples.append((entry.sample_id, error.reason))
            continue
        counts.good += 1
        _count_good(counts, entry.record, spec, encoded)
    return report


def _count_good(counts: DatasetStats, record: Any, spec: DatasetSpec, encoded: dict[str, Any]) -> None:
    """Add a good sample's images, videos and (when encoded) tokens to its dataset's counts."""
    images = len(image_paths(record, spec.images_root, spec.allow_outside_paths))
    videos = len(video_paths(record, spec.videos_root, spec.allow_outside_paths))
    counts.images += images
    counts.videos += videos
    counts.text_only += images + videos == 0
    if encoded:
        length = int(encoded["input_ids"].shape[0])
        counts.tokens += length
        counts.answer_tokens += int((encoded["labels"] != IGNORE_INDEX).sum())
        counts.longest = max(counts.longest, length)
