"""Baselines beside every metric: what guessing and always giving the most common answer score.

A number means little without them: 45 % counting accuracy is learning when chance is 20 %,
and nothing when the most common count alone scores 45 %.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def chance_accuracy(questions: Sequence[dict[str, Any]]) -> float:
    """Expected accuracy of guessing uniformly among each question's `num_choices` answers."""
    if not questions:
        raise ValueError("chance_accuracy: no questions")
    return sum(1.0 / q["num_choices"] for q in questions) / len(questions)


def majority_accuracy(questions: Sequence[dict[str, Any]]) -> float:
    """Accuracy of always giving the most common answer of each question's category."""
    if not questions:
        raise ValueError("majority_accuracy: no questions")
    by_category: dict[str, Counter[str]] = {}
    for q in questions:
        by_category.setdefault(q["category"], Counter())[q["answer"]] += 1
    return sum(c.most_common(1)[0][1] for c in by_category.values()) / len(questions)


def baselines(questions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """`chance` and `majority` accuracy of `questions`, each where their fields allow it.

    Chance needs a positive `num_choices` on every question; majority needs hashable
    answers (single strings), grouped by `category` (one group when there is none).
    """
    if not questions:
        return {}
    out: dict[str, float] = {}
    if all(isinstance(q.get("num_choices"), int) and q["num_choices"] > 0 for q in questions):
        out["chance"] = chance_accuracy(questions)
    if all(isinstance(q.get("answer"), (str, int)) for q in questions):
        out["majority"] = majority_accuracy([{**q, "category": q.get("category", "")} for q in questions])
    return out
