"""What every benchmark reader produces and every scorer consumes.

A reader turns the files a benchmark's authors publish into `BenchmarkData`: one `Question` per
prompt the model answers, with the prompt written as LLaVA-1.5's evaluation writes it, the
image (a file, or the base64 text some files embed), and what scoring needs (the reference,
breakdown fields). A scorer is a pure function of the data and the predictions keyed by question
id, so answers produced anywhere (several processes, another tool) score the same.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llavakit.errors import DataError

if TYPE_CHECKING:
    from llavakit.eval.judge import Judge

Metrics = dict[str, float]
# metric name -> group value -> metrics, e.g. {"split": {"random": {...}, "popular": {...}}}
Groups = dict[str, dict[str, Metrics]]


@dataclass(frozen=True)
class EncodedImage:
    """An image stored inside a benchmark file (MMBench's base64 column), decoded only when asked."""

    data: str
    where: str

    def decode(self) -> bytes:
        """The image file's bytes; text that is not base64 raises a DataError naming where it came from."""
        try:
            return base64.b64decode(self.data, validate=False)
        except (binascii.Error, ValueError) as error:
            raise DataError(f"{self.where}: the image is not valid base64 ({error})") from error


ImageRef = Path | EncodedImage


def text_alias(key: Any, question: str) -> str:
    """The alias that matches an answer by its question id plus the question text of its prompt."""
    return f"{key}\t{question.strip().lower()}"


@dataclass(frozen=True)
class Question:
    """One prompt of a benchmark.

    `id` is unique within the benchmark and keys the answers (a string, so ids from JSON, TSV and
    answers files compare alike); `source_id` is the id as the benchmark writes it (written back
    into answers files). `prompt` is the user turn without the image placeholder. `reference` is
    what the scorer compares with (None: not published, e.g. a test split). `groups` are the
    breakdown fields (split, category, ...). `aliases` are other keys an answers file made by
    another tool may use for this question (see `answers.resolve_answers`).
    """

    id: str
    source_id: int | str
    prompt: str
    image: ImageRef | None
    reference: Any = None
    groups: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


@dataclass
class BenchmarkData:
    """A benchmark read from its files: questions in file order, and what scoring needs besides them."""

    task: str
    questions: list[Question]
    sources: list[Path]
    image_folder: Path | None = None
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def limited(self, limit: int | None) -> BenchmarkData:
        """The first `limit` questions (all when None), everything else shared."""
        if limit is None:
            return self
        return BenchmarkData(
            self.task, self.questions[:limit], self.sources, self.image_folder, self.notes, self.extras
        )


@dataclass
class BenchmarkScore:
    """The metrics of one benchmark: overall, per group value, per question, and notes on what was left out."""

    metrics: Metrics
    groups: Groups = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    judge: dict[str, Any] | None = None


Loader = Callable[[Sequence[Path], Path | None], BenchmarkData]
Scorer = Callable[[BenchmarkData, Mapping[str, str], "Judge | None"], BenchmarkScore]
Submission = Callable[[BenchmarkData, Mapping[str, str]], Any]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how its files are read, how answers are scored, how results print.

    `data_help` says what `--data` takes. `headline` is the metric a paper's table reports.
    `raw_metrics` print as numbers (MME's 0-200 scores, the judge's 1-10 scores); the other
    metrics are fractions and print as percentages. `submission` builds the file an evaluation
    server takes (VQAv2, VizWiz). `judged`: scoring needs an LLM judge.
    """

    name: str
    title: str
    data_help: str
    load: Loader
    score: Scorer
    headline: str
    max_new_tokens: int = 128
    raw_metrics: frozenset[str] = frozenset()
    submission: Submission | None = None
    judged: bool = False
    judge_temperature: float | None = None
