"""Benchmark metrics against hand-computed values and the official definitions' quirks.

VQA: GT-Vision-Lab/VQA `vqaEval.py` (normalisation, min(#humans/3, 1) over 10-choose-9
subsets); POPE: LLaVA's `llava/eval/eval_pope.py`; counting and exact match build on the
VQA normalisation.
"""

from __future__ import annotations

import itertools
import random

import pytest

from llavakit.eval.counting import count_label, counting_correct, parse_count
from llavakit.eval.metrics import get_task, grouped_metrics, task_metrics
from llavakit.eval.pope import pope_answer, pope_label, pope_metrics
from llavakit.eval.vqa import (
    exact_match,
    normalize_answer,
    process_punctuation,
    vqa_accuracy,
)

# ---- VQA normalisation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two.", "2"),  # sentence period dropped, number word -> digit
        ("a dog", "dog"),  # article dropped
        ("yes.", "yes"),
        ("The Ten", "10"),
        ("none", "0"),  # the official manualMap maps "none" to 0
        ("An apple", "apple"),
        ("dont", "don't"),  # contraction restored
        ("Don't", "don't"),  # "'" is not in the punctuation list
        ("2.5", "2.5"),  # a period before a digit stays
        ("1,000", "1000"),  # digit,digit comma: every listed mark is deleted
        ("red,blue", "red blue"),  # a mark with no space beside it becomes a space
        ("red, blue", "red blue"),  # a mark next to a space is deleted
        ("black-and-white", "black and white"),
        ("hi!", "hi"),
        ("  Yes\n", "yes"),  # newline -> space, stripped
        ("what's up?", "what's up"),
        ("Im here", "im here"),  # capitalised contraction keys never match after lower-casing
    ],
)
def test_normalize_answer_follows_the_official_script(text, expected):
    assert normalize_answer(text) == expected


def test_only_32_sentence_periods_are_removed_as_in_the_official_call():
    # The official script passes re.UNICODE (= 32) as re.sub's `count`.
    assert normalize_answer("yes" + "." * 40) == "yes" + "." * 8


def test_punctuation_test_looks_at_the_input_not_the_running_output():
    # "(" has a space beside it in the input, so it is deleted; ")" has none, so it becomes a space.
    assert process_punctuation("a (b)c") == "a b c"


# ---- VQA accuracy --------------------------------------------------------------------------


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_by_number_of_agreeing_humans(matches, expected):
    # m of 10 agree: the m agreeing annotators see m-1 others, the 10-m others see m.
    answers = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("Two.", answers) == pytest.approx(expected)


def _paper_definition(prediction: str, answers: list[str]) -> float:
    """min(#humans that said it / 3, 1) averaged over all 10-choose-9 subsets (references already normal)."""
    predicted = normalize_answer(prediction)
    subsets = list(itertools.combinations(range(len(answers)), len(answers) - 1))
    return sum(min(1.0, sum(answers[i] == predicted for i in subset) / 3) for subset in subsets) / len(subsets)


def test_vqa_accuracy_equals_the_subset_definition_on_random_cases():
    rng = random.Random(0)
    vocabulary = ["2", "3", "dog", "cat", "yes"]
    for _ in range(200):
        answers = [rng.choice(vocabulary) for _ in range(10)]
        prediction = rng.choice(["two", "3.", "a dog", "Cat", "yes!", "no"])
        assert vqa_accuracy(prediction, answers) == pytest.approx(_paper_definition(prediction, answers))


def test_vqa_references_get_only_punctuation_processing_when_annotators_disagree():
    # Disagreeing annotators: "dog." loses its period, so it matches the prediction "dog".
    assert vqa_accuracy("dog", ["dog."] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    # Unanimous annotators are compared raw (as the annotation file stores them): "Dog" != "dog".
    assert vqa_accuracy("dog", ["Dog"] * 10) == 0.0


def test_vqa_accuracy_needs_the_human_answers():
    with pytest.raises(ValueError, match="human answers"):
        vqa_accuracy("dog", "dog")
    with pytest.raises(ValueError, match="human answers"):
        vqa_accuracy("dog", ["dog"])


# ---- exact match ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, answer, expected",
    [
        ("Two.", "2", True),
        ("2", "two", True),
        ("a dog", "dog", True),
        ("yes.", "yes", True),
        ("The red circle.", "red circle", True),
        ("red", "red circle", False),
        ("3", "2", False),
        ("blue", ["red", "Blue"], True),
    ],
)
def test_exact_match_normalises_both_sides(prediction, answer, expected):
    assert exact_match(prediction, answer) is expected


# ---- counting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two.", 2),
        ("2", 2),
        ("There are three circles.", 3),
        ("there are 12 dots", 12),
        ("Twelve", 12),
        ("none", 0),
        ("zero", 0),
        ("no circles", None),
        ("2.5 circles", None),
        ("many", None),
    ],
)
def test_parse_count_reads_digits_and_number_words(text, expected):
    assert parse_count(text) == expected


def test_counting_correct_accepts_words_and_digits_on_either_side():
    assert counting_correct("three", "3")
    assert counting_correct("3", 3)
    assert counting_correct("There are three circles.", "three")
    assert not counting_correct("There are 4 circles.", "3")
    assert not counting_correct("I cannot tell", "3")


def test_count_label_rejects_non_counts_naming_the_question():
    assert count_label("5") == 5
    with pytest.raises(ValueError, match="'q7'"):
        count_label("many", "q7")
    with pytest.raises(ValueError, match="non-negative"):
        count_label(-1)


# ---- POPE ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("Yes, there is a dog in the image.", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("No, there is not.", "no"),
        ("There is not a dog.", "no"),
        ("Yes. No dog though", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # only "No", "no", "not" as whole words (LLaVA's eval_pope rule)
        ("Not sure", "yes"),
        ("nothing", "yes"),
        ("no,there", "yes"),  # the comma is deleted, leaving one word "nothere"
        ("I don't think so", "yes"),
    ],
)
def test_pope_answer_follows_llava_eval_pope(text, expected):
    assert pope_answer(text) == expected


def test_pope_metrics_hand_computed():
    predictions = ["Yes", "yes, it is", "No", "There is no dog.", "Yes"]
    labels = ["yes", "no", "no", "yes", "yes"]
    # TP = 2 (0, 4), FP = 1 (1), TN = 1 (2), FN = 1 (3)
    metrics = pope_metrics(predictions, labels)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["yes_ratio"] == pytest.approx(3 / 5)
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (2, 1, 1, 1)


def test_pope_metrics_unequal_precision_and_recall():
    # TP = 3, FP = 1, TN = 0, FN = 2: precision 3/4, recall 3/5, F1 = 2 * 0.75 * 0.6 / 1.35 = 2/3.
    predictions = ["yes", "yes", "yes", "yes", "no", "no"]
    labels = ["yes", "yes", "yes", "no", "yes", "yes"]
    metrics = pope_metrics(predictions, labels)
    assert metrics["precision"] == pytest.approx(0.75)
    assert metrics["recall"] == pytest.approx(0.6)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["yes_ratio"] == pytest.approx(4 / 6)


def test_pope_metrics_with_no_yes_predictions_are_zero_not_an_error():
    metrics = pope_metrics(["no", "no"], ["yes", "no"])
    assert (metrics["precision"], metrics["recall"], metrics["f1"]) == (0.0, 0.0, 0.0)
    assert metrics["accuracy"] == 0.5


def test_pope_label_checks_the_reference():
    assert pope_label(" Yes ") == "yes"
    with pytest.raises(ValueError, match="'q1'"):
        pope_label("maybe", "q1")


# ---- tasks ---------------------------------------------------------------------------------


def test_task_metrics_and_groups():
    records = [
        {"prediction": "Two.", "answer": "2", "category": "count"},
        {"prediction": "3", "answer": "2", "category": "count"},
        {"prediction": "a red circle", "answer": "red circle", "category": "region"},
        {"prediction": "blue", "answer": "blue"},  # no category: only in the overall metrics
    ]
    overall = task_metrics("exact", [r["prediction"] for r in records], [r["answer"] for r in records])
    assert overall == {"accuracy": 0.75, "n": 4}
    groups = grouped_metrics("exact", records, ["category", "strategy"])
    assert groups == {"category": {"count": {"accuracy": 0.5, "n": 2}, "region": {"accuracy": 1.0, "n": 1}}}


def test_counting_task_reports_answers_without_a_number():
    metrics = task_metrics("counting", ["two", "no idea", "4"], ["2", "3", "3"])
    assert metrics == {"accuracy": pytest.approx(1 / 3), "no_number": pytest.approx(1 / 3), "n": 3}


def test_task_parse_shows_what_was_compared():
    assert get_task("pope").parse("No, there is not.") == "no"
    assert get_task("counting").parse("There are three.") == 3
    assert get_task("exact").parse("The Dog.") == "dog"


def test_task_answer_checks_name_the_question():
    with pytest.raises(ValueError, match="'q3'.*list of human answers"):
        get_task("vqa").check_answer("dog", "q3")
    with pytest.raises(ValueError, match="'q4'"):
        get_task("pope").check_answer("maybe", "q4")
    with pytest.raises(ValueError, match="unknown evaluation task"):
        get_task("bleu")
