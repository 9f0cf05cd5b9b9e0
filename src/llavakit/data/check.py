"""`llavakit data check`: every sample checked as training would check it, counted and reported.

Nothing is silently lost: the report lists every bad sample with its id and reason, and the
counts (samples, images, videos, tokens, answer tokens) are those of the good samples. Every
record is checked once, whatever its format (conversation, interleaved document, text) and
however often a weighted mixture draws it; `answer tokens` are the tokens that carry loss (all
text of documents and text records), `truncated` the tokens cut from documents longer than
`max_length`, and `draws` (weighted mixtures) how many samples one epoch draws from each dataset.
Sample ids that repeat within a dataset are listed as a warning (the samples are still checked
and counted: LLaVA-style data reuses an image's id for several conversations).
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
from llavakit.data.formats import EncodedSample, encode_dataset_sample
from llavakit.data.records import BadSampleError, DatasetSpec, printable
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
    truncated: int = 0  # tokens cut from documents longer than max_length
    draws: int | None = None  # samples one epoch draws from the dataset (weighted mixtures)

    @property
    def bad(self) -> int:
        return self.samples - self.good


_ALL_COLUMNS = (
    "dataset",
    "records",
    "samples",
    "good",
    "bad",
    "images",
    "videos",
    "text-only",
    "tokens",
    "answer tokens",
    "longest",
    "truncated",
    "draws",
)
_SUMMED = ("samples", "good", "images", "videos", "text_only", "tokens", "answer_tokens", "truncated")


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

    def _columns(self) -> list[str]:
        """The count columns to show: tokens only when counted, truncation and draws only when there are any."""
        columns = ["dataset", "records", "samples", "good", "bad", "images", "videos", "text-only"]
        if self.tokens_counted:
            columns += ["tokens", "answer tokens", "longest"]
            if self._total("truncated"):
                columns.append("truncated")
        if any(stats.draws is not None for stats in self.datasets):
            columns.append("draws")
        return columns

    def _row(self, stats: DatasetStats) -> dict[str, Any]:
        values = (
            stats.name,
            stats.records,
            stats.samples,
            stats.good,
            stats.bad,
            stats.images,
            stats.videos,
            stats.text_only,
            stats.tokens,
            stats.answer_tokens,
            stats.longest,
            stats.truncated,
            stats.draws,
        )
        return dict(zip(_ALL_COLUMNS, values))

    def _total_row(self) -> dict[str, Any]:
        draws = [stats.draws for stats in self.datasets if stats.draws is not None]
        total = DatasetStats("total", "", self._total("records"), **{name: self._total(name) for name in _SUMMED})
        total.longest = max((s.longest for s in self.datasets), default=0)
        total.draws = sum(draws) if draws else None
        return self._row(total)

    def render(self, width: int = 120) -> str:
        """The report as text tables (rich); what is not valid UTF-8 (file names, ids) is printed escaped."""
        console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
        counts = Table(title="datasets")
        columns = self._columns()
        for column in columns:
            counts.add_column(column, justify="left" if column == "dataset" else "right")
        rows = [self._row(s) for s in self.datasets]
        if len(self.datasets) > 1:
            rows.append(self._total_row())
        for row in rows:
            counts.add_row(*(Text(printable(str(row[column]))) for column in columns))
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
    specs: Sequence[DatasetSpec],
    processor: LlavaKitProcessor | None,
    max_length: int | None,
    seed: int = 0,
    mixture_size: int | None = None,
) -> DataReport:
    """Check every sample of the mixture as training would, and count samples, images, videos and tokens.

    Without a processor, structure, text, paths, images and videos are still checked (videos
    sampled with the default `FrameSampling`) but tokens are not counted, so `max_length`
    needs a processor (`ConfigError` otherwise, rather than a report that claims lengths were checked).
    `mixture_size` (with weighted datasets) sets the draws per epoch the report shows.
    """
    if max_length is not None and processor is None:
        raise ConfigError("max_length needs a processor: lengths are counted in the processor's tokens")
    if max_length is not None and max_length < 1:
        raise ConfigError(f"max_length must be at least 1, got {max_length}")
    specs = list(specs)
    mixture = read_mixture(specs, seed, mixture_size)
    stats = [DatasetStats(spec.name, str(spec.path), total) for spec, total in zip(specs, mixture.totals)]
    if mixture.weighted:
        for counts, draws in zip(stats, mixture.draw_counts(len(specs))):
            counts.draws = draws
    report = DataReport(stats, max_length=max_length, tokens_counted=processor is not None)
    report.duplicates = mixture.duplicates_summary()
    for entry in mixture.entries:
        spec, counts = specs[entry.spec_index], stats[entry.spec_index]
        counts.samples += 1
        try:
            encoded = encode_dataset_sample(entry.record, spec, processor, max_length)
        except BadSampleError as error:
            report.bad_samples.append((entry.sample_id, error.reason))
            continue
        counts.good += 1
        _count_good(counts, encoded)
    return report


def _count_good(counts: DatasetStats, encoded: EncodedSample) -> None:
    """Add a good sample's images, videos and (when encoded) tokens to its dataset's counts."""
    counts.images += encoded.images
    counts.videos += encoded.videos
    counts.text_only += encoded.images + encoded.videos == 0
    counts.truncated += encoded.truncated_tokens
    if encoded.features:
        length = int(encoded.features["input_ids"].shape[0])
        counts.tokens += length
        counts.answer_tokens += int((encoded.features["labels"] != IGNORE_INDEX).sum())
        counts.longest = max(counts.longest, length)
