"""POPE and MME from their published files: yes / no reading, per-split and per-subtask metrics by hand.

POPE: the folder of coco_pope_<split>.json files (one {question_id, image, text, label} a line).
MME: the release folder (subtask folders, question files beside the images or in
questions_answers_YN/ with the images in images/) and the evaluation tool's <subtask>.txt form.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from llavakit.errors import DataError
from llavakit.eval.benchmarks import load_benchmark, score_benchmark
from llavakit.eval.benchmarks.mme import mme_answer
from llavakit.eval.benchmarks.prompts import SHORT_ANSWER

# ---- POPE ---------------------------------------------------------------------------------------


def pope_file(path, rows):
    lines = [
        {"question_id": i + 1, "image": image, "text": f"Is there a {thing} in the image?", "label": label}
        for i, (image, thing, label) in enumerate(rows)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def pope(tmp_path):
    folder = tmp_path / "coco"
    folder.mkdir()
    pope_file(
        folder / "coco_pope_random.json",
        [("a.jpg", "dog", "yes"), ("a.jpg", "car", "no"), ("b.jpg", "cat", "yes"), ("b.jpg", "bus", "no")],
    )
    pope_file(folder / "coco_pope_popular.json", [("a.jpg", "dog", "yes"), ("a.jpg", "cat", "no")])
    pope_file(
        folder / "coco_pope_adversarial.json",
        [("a.jpg", "dog", "yes"), ("a.jpg", "leash", "no"), ("b.jpg", "bowl", "no")],
    )
    return folder


def test_pope_reads_the_coco_files_and_scores_each_split(pope):
    data = load_benchmark("pope", [pope])
    assert [q.id for q in data.questions][:5] == ["random-1", "random-2", "random-3", "random-4", "popular-1"]
    assert data.questions[0].prompt == f"Is there a dog in the image?\n{SHORT_ANSWER}"
    predictions = {
        "random-1": "Yes, there is a dog.",  # TP
        "random-2": "No.",  # TN
        "random-3": "No, there is not.",  # FN
        "random-4": "Yes",  # FP
        "popular-1": "Yes",  # TP
        "popular-2": "There is not a cat.",  # TN ("not")
        "adversarial-1": "yes",  # TP
        "adversarial-2": "yes",  # FP
        "adversarial-3": "no",  # TN
    }
    score = score_benchmark("pope", data, predictions)
    random, popular, adversarial = (score.groups["split"][name] for name in ("random", "popular", "adversarial"))
    assert {k: random[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")} == {
        "accuracy": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "yes_ratio": 0.5,
    }
    assert (popular["accuracy"], popular["f1"], popular["yes_ratio"]) == (1.0, 1.0, 0.5)
    assert adversarial["precision"] == 0.5 and adversarial["recall"] == 1.0
    assert adversarial["f1"] == pytest.approx(2 / 3) and adversarial["yes_ratio"] == pytest.approx(2 / 3)
    assert score.metrics["f1"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)  # the mean over the splits
    assert score.metrics["accuracy"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    assert score.metrics["n"] == 9


def test_pope_line_without_label_is_named(pope):
    path = pope / "coco_pope_random.json"
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"question_id": 3, "image": "b.jpg", "text": "Is there a cat?"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"POPE file .*coco_pope_random\.json: line 3 has no 'label'"):
        load_benchmark("pope", [pope])


def test_pope_folder_without_pope_files(tmp_path):
    with pytest.raises(DataError, match="holds no coco_pope_<split>.json files"):
        load_benchmark("pope", [tmp_path])


# ---- MME ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("Yes", "yes"),
        ("yes, it is", "yes"),
        ("No.", "no"),
        ("Not really", "no"),  # "not " holds "no"
        ("I think yes", "other"),  # only the first four characters decide
        ("The answer is yes", "other"),
        ("nope", "no"),
    ],
)
def test_mme_reads_replies_as_calculation_py(reply, expected):
    assert mme_answer(reply) == expected


def qa(question_yes: str, question_no: str) -> str:
    return f"{question_yes} Please answer yes or no.\tYes\n{question_no} Please answer yes or no.\tNo\n"


@pytest.fixture
def mme(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version" / "MME_Benchmark"
    existence, artwork, code = root / "existence", root / "artwork", root / "code_reasoning"
    for folder in (existence, artwork / "images", artwork / "questions_answers_YN", code):
        folder.mkdir(parents=True)
    for name in ("1", "2"):
        Image.new("RGB", (4, 4)).save(existence / f"{name}.png")
    (existence / "1.txt").write_text(qa("Is there a dog?", "Is there a cat?"))
    (existence / "2.txt").write_text(qa("Is there a tree?", "Is there a car?"))
    Image.new("RGB", (4, 4)).save(artwork / "images" / "10.jpg")
    (artwork / "questions_answers_YN" / "10.txt").write_text(qa("Is it a painting?", "Is it glassware?"))
    Image.new("RGB", (4, 4)).save(code / "5.png")
    (code / "5.txt").write_text(qa("Does the code print 3?", "Does the code print 4?"))
    return root


MME_PREDICTIONS = {
    "existence/1.png#1": "Yes",  # right
    "existence/1.png#2": "No, there is not",  # right: image 1 has both right
    "existence/2.png#1": "Yes",  # right
    "existence/2.png#2": "yes",  # wrong
    "artwork/10.jpg#1": "no",  # wrong
    "artwork/10.jpg#2": "No",  # right
    "code_reasoning/5.png#1": "Sure",  # other: wrong
    "code_reasoning/5.png#2": "no",  # right
}


def test_mme_release_folder_acc_plus_and_totals(mme):
    data = load_benchmark("mme", [mme.parent])  # the release folder, MME_Benchmark/ inside
    assert sorted(q.id for q in data.questions) == sorted(MME_PREDICTIONS)
    first = next(q for q in data.questions if q.id == "existence/1.png#1")
    assert first.prompt == f"Is there a dog? Please answer yes or no.\n{SHORT_ANSWER}"
    assert first.image == mme / "existence" / "1.png"
    score = score_benchmark("mme", data, MME_PREDICTIONS)
    existence = score.groups["subtask"]["existence"]
    assert (existence["acc"], existence["acc_plus"], existence["score"]) == (0.75, 0.5, 125.0)
    assert score.groups["subtask"]["artwork"] == {"acc": 0.5, "acc_plus": 0.0, "score": 50.0, "n": 2.0}
    assert score.groups["subtask"]["code_reasoning"]["score"] == 50.0
    assert score.metrics["perception"] == 175.0 and score.metrics["cognition"] == 50.0
    assert any("subtasks not in the data" in note for note in data.notes)


def test_mme_acc_plus_counts_only_images_with_both_answers(mme):
    data = load_benchmark("mme", [mme])
    partial = {k: v for k, v in MME_PREDICTIONS.items() if k != "existence/2.png#2"}
    existence = score_benchmark("mme", data, partial).groups["subtask"]["existence"]
    assert existence["acc"] == 1.0 and existence["acc_plus"] == 1.0  # image 2 is left out of acc+


def test_mme_results_template_files(mme, tmp_path):
    template = tmp_path / "Your_Results"
    template.mkdir()
    (template / "existence.txt").write_text(
        "1.png\tIs there a dog? Please answer yes or no.\tYes\n1.png\tIs there a cat? Please answer yes or no.\tNo\n"
    )
    with pytest.raises(DataError, match="give --image-folder"):
        load_benchmark("mme", [template])
    data = load_benchmark("mme", [template], image_folder=mme.parent)
    assert [q.id for q in data.questions] == ["existence/1.png#1", "existence/1.png#2"]
    assert data.questions[0].image == mme / "existence" / "1.png"


def test_mme_bad_question_line_is_named(mme):
    (mme / "existence" / "2.txt").write_text("Is there a tree? Please answer yes or no.\tMaybe\n")
    with pytest.raises(DataError, match=r"2\.txt line 1: the answer must be Yes or No, got 'Maybe'"):
        load_benchmark("mme", [mme])
