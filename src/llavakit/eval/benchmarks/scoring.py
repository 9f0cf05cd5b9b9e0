"""Helpers every scorer shares: which questions can be scored, per-question records, group breakdowns.

A question counts when it has an answer and a reference; the rest are counted in the notes
(unanswered questions; questions of a test split, whose references only the server has), never
silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Groups, Metrics, Question

# (score in [0, 1], what the score compared: the parsed answer)
Scored = tuple[float, Any]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def coverage_notes(data: BenchmarkData, predictions: Mapping[str, str]) -> list[str]:
    """Notes on questions left out of the metrics: unanswered, or without a published reference."""
    notes = []
    unanswered = [q.id for q in data.questions if q.id not in predictions]
    if unanswered:
        shown = ", ".join(unanswered[:3]) + (" ..." if len(unanswered) > 3 else "")
        notes.append(f"{len(unanswered)} of {len(data.questions)} questions have no answer ({shown})")
    unreferenced = sum(1 for q in data.questions if q.reference is None and q.id in predictions)
    if unreferenced:
        notes.append(
            f"{unreferenced} answered questions have no reference answer in the data (a test split): "
            "the server scores them (see the submission file)"
        )
    return notes


def scorable(data: BenchmarkData, predictions: Mapping[str, str]) -> list[Question]:
    """The questions with an answer and a reference, in data order."""
    return [q for q in data.questions if q.id in predictions and q.reference is not None]


def record(question: Question, prediction: str, score: float, parsed: Any, **extra: Any) -> dict[str, Any]:
    """One row of the scored-answers file."""
    return {
        "question_id": question.id,
        "prediction": prediction,
        "parsed": parsed,
        "score": score,
        **dict(question.groups),
        **extra,
    }


def group_values(records: Iterable[Mapping[str, Any]], field: str) -> dict[str, list[Mapping[str, Any]]]:
    """The records by their value of `field` (records without it are left out), values sorted."""
    buckets: dict[str, list[Mapping[str, Any]]] = {}
    for item in records:
        if item.get(field) is not None:
            buckets.setdefault(str(item[field]), []).append(item)
    return dict(sorted(buckets.items()))


def grouped(
    records: Sequence[Mapping[str, Any]], fields: Sequence[str], metrics: Callable[[Sequence[Mapping]], Metrics]
) -> Groups:
    """`metrics` of the records per value of each field that any record has."""
    groups: Groups = {}
    for field in fields:
        buckets = group_values(records, field)
        if buckets:
            groups[field] = {value: metrics(members) for value, members in buckets.items()}
    return groups


def accuracy_metrics(records: Sequence[Mapping[str, Any]]) -> Metrics:
    """Mean score and count."""
    return {"accuracy": mean([item["score"] for item in records]), "n": float(len(records))}


def score_each(
    data: BenchmarkData,
    predictions: Mapping[str, str],
    score_one: Callable[[Question, str], Scored],
    fields: Sequence[str] = (),
) -> BenchmarkScore:
    """Per-question scores averaged overall and per group: the shape of most benchmarks."""
    records = []
    for question in scorable(data, predictions):
        score, parsed = score_one(question, predictions[question.id])
        records.append(record(question, predictions[question.id], score, parsed))
    metrics = accuracy_metrics(records) if records else {}
    return BenchmarkScore(
        metrics, grouped(records, fields, accuracy_metrics), records, coverage_notes(data, predictions)
    )
