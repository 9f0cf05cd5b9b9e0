"""Evaluation tasks by name: how one answer is checked and scored, and how scores aggregate.

| task | answer in the question file | per-question score | metrics |
|---|---|---|---|
| `vqa` | the human answers (list, 10 in VQAv2) | VQA accuracy (`vqa.vqa_accuracy`) | accuracy |
| `exact` | one answer or a list of accepted ones | normalised exact match (`vqa.exact_match`) | accuracy |
| `counting` | the count (int or text) | first number equals it (`counting`) | accuracy, no_number |
| `pope` | "yes" / "no" | parsed yes/no equals it (`pope`) | accuracy, precision, recall, f1, yes_ratio |

Every metrics dict also holds `n`, the number of questions it covers. Values are
fractions in [0, 1]; tables show them as percentages. Each task's `parse` says what its
score compared (normalised text, count, yes / no); the runner writes it beside each
prediction and adds the `chance` / `majority` baselines (`questions.baselines`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llavakit.eval.counting import count_label, counting_correct, parse_count
from llavakit.eval.pope import pope_answer, pope_label, pope_metrics
from llavakit.eval.vqa import exact_match, normalize_answer, vqa_accuracy

Metrics = dict[str, float]
# Metrics that are counts, not fractions (tables print them as whole numbers).
COUNT_METRICS = frozenset({"n", "tp", "fp", "tn", "fn"})


@dataclass(frozen=True)
class Task:
    """One way of scoring.

    `check_answer(answer, question_id)` raises ValueError on a bad reference; `score` gives
    one prediction's credit in [0, 1]; `aggregate` turns predictions, answers and scores
    into the task's metrics; `parse` is what the score compares (the normalised text, the
    count, yes / no), written beside each prediction so a reader can see why it scored.
    """

    name: str
    description: str
    check_answer: Callable[[Any, Any], None]
    score: Callable[[str, Any], float]
    aggregate: Callable[[Sequence[str], Sequence[Any], Sequence[float]], Metrics]
    headline: str
    parse: Callable[[str], Any]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _check_vqa(answer: Any, question_id: Any) -> None:
    if isinstance(answer, str) or not isinstance(answer, Sequence) or len(answer) < 2:
        raise ValueError(
            f"question {question_id!r}: task 'vqa' needs the list of human answers, got {answer!r}; "
            "use task 'exact' for a single reference answer"
        )
    if not all(isinstance(item, str) for item in answer):
        raise ValueError(f"question {question_id!r}: human answers must be strings, got {answer!r}")


def _check_exact(answer: Any, question_id: Any) -> None:
    references = [answer] if isinstance(answer, str) else answer
    if not isinstance(references, Sequence) or not references or not all(isinstance(a, str) for a in references):
        raise ValueError(
            f"question {question_id!r}: task 'exact' needs an answer string or a list of them, got {answer!r}"
        )


def _check_counting(answer: Any, question_id: Any) -> None:
    count_label(answer, question_id)


def _check_pope(answer: Any, question_id: Any) -> None:
    pope_label(answer, question_id)


def _accuracy(predictions: Sequence[str], answers: Sequence[Any], scores: Sequence[float]) -> Metrics:
    return {"accuracy": _mean(scores)}


def _counting_metrics(predictions: Sequence[str], answers: Sequence[Any], scores: Sequence[float]) -> Metrics:
    no_number = [parse_count(prediction) is None for prediction in predictions]
    return {"accuracy": _mean(scores), "no_number": _mean(no_number)}


def _pope_metrics(predictions: Sequence[str], answers: Sequence[Any], scores: Sequence[float]) -> Metrics:
    return pope_metrics(predictions, answers)


TASKS: Mapping[str, Task] = {
    task.name: task
    for task in (
        Task(
            "vqa",
            "VQA accuracy against the human answers",
            _check_vqa,
            vqa_accuracy,
            _accuracy,
            "accuracy",
            normalize_answer,
        ),
        Task(
            "exact",
            "short-answer exact match after VQA normalisation",
            _check_exact,
            lambda prediction, answer: float(exact_match(prediction, answer)),
            _accuracy,
            "accuracy",
            normalize_answer,
        ),
        Task(
            "counting",
            "first number in the answer equals the count",
            _check_counting,
            lambda prediction, answer: float(counting_correct(prediction, answer)),
            _counting_metrics,
            "accuracy",
            parse_count,
        ),
        Task(
            "pope",
            "POPE yes/no hallucination probing",
            _check_pope,
            lambda prediction, answer: float(pope_answer(prediction) == pope_label(answer)),
            _pope_metrics,
            "f1",
            pope_answer,
        ),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown evaluation task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def task_metrics(task: str | Task, predictions: Sequence[str], answers: Sequence[Any]) -> Metrics:
    """The task's metrics over paired predictions and reference answers, plus `n`."""
    task = get_task(task) if isinstance(task, str) else task
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not predictions:
        return {"n": 0}
    scores = [task.score(prediction, answer) for prediction, answer in zip(predictions, answers)]
    return {**task.aggregate(predictions, answers, scores), "n": len(predictions)}


def grouped_metrics(
    task: str | Task, records: Iterable[Mapping[str, Any]], group_by: Sequence[str]
) -> dict[str, dict[str, Metrics]]:
    """Metrics per value of each field in `group_by` (e.g. category, POPE strategy).

    `records` hold `prediction` and `answer`; a record without the field is left out of
    that field's groups, and a field no record has gives no entry.
    """
    records = list(records)
    groups: dict[str, dict[str, Metrics]] = {}
    for field in group_by:
        buckets: dict[str, list[Mapping[str, Any]]] = {}
        for record in records:
            if record.get(field) is not None:
                buckets.setdefault(str(record[field]), []).append(record)
        if buckets:
            groups[field] = {
                value: task_metrics(task, [r["prediction"] for r in members], [r["answer"] for r in members])
                for value, members in sorted(buckets.items())
            }
    return groups
