"""Counting accuracy: the first number in the answer, digits or words, equals the true count.

Counting benchmarks (TallyQA, CountBench, the counting split of VQAv2) score exact integer
matches. Free answers say "3", "three" or "There are three circles.", so the answer is
normalised as VQA does (`vqa.normalize_answer`: punctuation, "three" -> "3", articles)
and its first whole number is taken, with the number words eleven..twenty understood
as well. "No circles" has no number (a model should say "0", "zero" or "none").
"""

from __future__ import annotations

from llavakit.eval.vqa import normalize_answer

# Beyond VQA's zero..ten (which normalize_answer already turns into digits).
_MORE_NUMBER_WORDS = {
    "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}  # fmt: skip


def parse_count(text: str) -> int | None:
    """The first whole number in `text` ("Two." -> 2, "there are 12 dots" -> 12), or None."""
    for word in normalize_answer(text).split():
        if word.isascii() and word.isdigit():
            return int(word)
        if word in _MORE_NUMBER_WORDS:
            return _MORE_NUMBER_WORDS[word]
    return None


def count_label(answer: int | str, question_id: object = None) -> int:
    """A ground-truth count as an int (an int, or a text holding one)."""
    count = answer if isinstance(answer, int) and not isinstance(answer, bool) else None
    if isinstance(answer, str):
        count = parse_count(answer)
    if count is None or count < 0:
        where = f"question {question_id!r}: " if question_id is not None else ""
        raise ValueError(f"{where}a counting answer must be a non-negative whole number, got {answer!r}")
    return count


def counting_correct(prediction: str, answer: int | str) -> bool:
    """Whether the first number in `prediction` equals the true count `answer`."""
    return parse_count(prediction) == count_label(answer)
