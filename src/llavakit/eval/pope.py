"""POPE (object hallucination) scoring, as LLaVA's `llava/eval/eval_pope.py` computes it.

POPE asks "Is there a <object> in the image?" with balanced yes / no labels (three
negative-sampling strategies: random, popular, adversarial, reported separately). A free
answer becomes yes / no by LLaVA's rule: keep the text before the first ".", delete
commas, split on single spaces; the answer is "no" when one of the words is exactly "No",
"no" or "not", otherwise "yes" (so "Not sure" and "NO" count as yes, as in the original).
"yes" is the positive class: accuracy, precision, recall, F1, and the yes-ratio (the share
of answers that are yes, which exposes a model that agrees with everything).
"""

from __future__ import annotations

from collections.abc import Sequence

_NO_WORDS = frozenset({"No", "no", "not"})
LABELS = ("yes", "no")


def pope_answer(text: str) -> str:
    """ "yes" or "no" for a free-form answer (LLaVA's eval_pope rule, see the module docstring)."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if _NO_WORDS.intersection(words) else "yes"


def pope_label(answer: str, question_id: object = None) -> str:
    """A ground-truth label as "yes" / "no" (case and surrounding spaces ignored)."""
    label = answer.strip().lower() if isinstance(answer, str) else None
    if label not in LABELS:
        where = f"question {question_id!r}: " if question_id is not None else ""
        raise ValueError(f"{where}a POPE answer must be 'yes' or 'no', got {answer!r}")
    return label


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio ("yes" positive) of free answers against labels.

    Also returns the counts tp, fp, tn, fn. Where the original divides by zero (no "yes"
    predicted, or no "yes" label) precision / recall / F1 are 0 here instead of an error.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not predictions:
        raise ValueError("POPE metrics need at least one prediction")
    tp = fp = tn = fn = 0
    for prediction, label in zip(predictions, labels):
        predicted_yes = pope_answer(prediction) == "yes"
        actual_yes = pope_label(label) == "yes"
        tp += predicted_yes and actual_yes
        fp += predicted_yes and not actual_yes
        tn += not predicted_yes and not actual_yes
        fn += not predicted_yes and actual_yes
    total = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / total,
        "tp": float(tp),
        "fp": float(fp),
        "tn": float(tn),
        "fn": float(fn),
    }
