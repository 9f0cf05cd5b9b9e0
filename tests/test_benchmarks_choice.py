"""ScienceQA-IMG, MMBench and SEED-Bench from their published files: prompts, option reading, hand-computed scores.

Fixtures follow the published layouts: ScienceQA's problems.json + pid_splits.json, MMBench's TSV
with base64 images (pandas-style quoting, circular passes as index + k * 1e6 rows), SEED-Bench.json.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from llavakit.errors import DataError
from llavakit.eval.benchmarks import load_benchmark, score_benchmark
from llavakit.eval.benchmarks.base import EncodedImage
from llavakit.eval.benchmarks.choices import mmbench_choice, scienceqa_choice, seed_choice
from llavakit.eval.benchmarks.files import read_tsv
from llavakit.eval.benchmarks.prompts import OPTION_LETTER
from llavakit.processing.images import load_image

# ---- option reading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, choices, expected",
    [
        ("A", 2, "A"),
        ("B. dog", 2, "B"),  # "X. " opening
        ("The answer is B.", 3, "B"),
        ("The answer is A. The answer is B.", 3, None),  # said twice: not read
        ("b", 2, None),  # case matters
        ("E", 2, None),  # a letter beyond the choices
        ("C", 3, "C"),
    ],
)
def test_scienceqa_choice_reads_as_llava_eval_science_qa(reply, choices, expected):
    assert scienceqa_choice(reply, choices) == expected


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("A", "A"),
        ("B.", "B"),  # punctuation becomes spaces
        ("(C) bird", "C"),
        ("The answer is B", "B"),  # the letter is among the last four words
        ("I think it is a dog", "B"),  # no letter: the one option whose text occurs
        ("A cat sits on the mat next to a big brown dog outside", None),  # leading article "A", too long for text
        ("A or B", None),  # two letters, and no option text
        ("cat and dog", None),  # two options' texts
        ("bird", "C"),
    ],
)
def test_mmbench_option_extraction(reply, expected):
    assert mmbench_choice(reply, ["cat", "dog", "bird"]) == expected


def test_seed_compares_the_reply_with_the_letter_exactly():
    assert seed_choice("A") == "A"
    assert seed_choice("A.") is None and seed_choice("a") is None and seed_choice("E") is None


# ---- ScienceQA ----------------------------------------------------------------------------------


def problem(question, choices, answer, image, split, subject, grade, hint=""):
    return {
        "question": question,
        "choices": choices,
        "answer": answer,
        "hint": hint,
        "image": image,
        "task": "closed choice",
        "grade": grade,
        "subject": subject,
        "topic": "t",
        "category": "c",
        "skill": "s",
        "lecture": "",
        "solution": "",
        "split": split,
    }


@pytest.fixture
def scienceqa(tmp_path):
    folder = tmp_path / "scienceqa"
    folder.mkdir()
    problems = {
        "1": problem("Which is a mammal?", ["frog", "dog"], 1, "image.png", "test", "natural science", "grade2"),
        "2": problem(
            "Which way is north?",
            ["up", "down", "left"],
            0,
            "image.png",
            "test",
            "social science",
            "grade8",
            hint="Look at the map.",
        ),
        "3": problem("Text only?", ["a", "b"], 0, None, "test", "language science", "grade3"),
        "4": problem("Validation?", ["a", "b"], 0, "image.png", "val", "natural science", "grade3"),
        "5": problem("Which word?", ["x", "y"], 0, "image.png", "test", "language science", "grade10"),
    }
    (folder / "problems.json").write_text(json.dumps(problems))
    (folder / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "5"], "val": ["4"]}))
    (folder / "images" / "test").mkdir(parents=True)
    return folder


def test_scienceqa_img_prompts_and_breakdowns(scienceqa):
    data = load_benchmark("scienceqa", [scienceqa])
    assert [q.id for q in data.questions] == ["1", "2", "5"]  # the test problems with an image
    assert data.questions[1].prompt == (
        f"Context: Look at the map.\nWhich way is north?\nA. up\nB. down\nC. left\n{OPTION_LETTER}"
    )
    assert data.questions[0].prompt == f"Which is a mammal?\nA. frog\nB. dog\n{OPTION_LETTER}"
    assert data.questions[0].image == scienceqa / "images" / "test" / "1" / "image.png"
    score = score_benchmark("scienceqa", data, {"1": "B", "2": "The answer is A.", "5": "C"})
    assert score.metrics == {"accuracy": pytest.approx(2 / 3), "n": 3.0}  # "C" is not one of problem 5's choices
    assert {value: m["accuracy"] for value, m in score.groups["subject"].items()} == {
        "LAN": 0.0,
        "NAT": 1.0,
        "SOC": 1.0,
    }
    assert {value: m["accuracy"] for value, m in score.groups["context"].items()} == {"none": 0.5, "text": 1.0}
    assert {value: m["accuracy"] for value, m in score.groups["grade"].items()} == {"1-6": 1.0, "7-12": 0.5}


# ---- MMBench ------------------------------------------------------------------------------------


def png_base64(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category"]


def tsv(path, rows):
    """A TSV as pandas writes one: a header, tab-separated cells, quotes around cells holding tabs or newlines."""

    def cell(value):
        text = "" if value is None else str(value)
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in '\t\n"') else text

    lines = ["\t".join(COLUMNS)] + ["\t".join(cell(row.get(name)) for name in COLUMNS) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def mm_row(index, question, options, answer, image, category, hint=None):
    row = {
        "index": index,
        "question": question,
        "hint": hint,
        "answer": answer,
        "image": image,
        "category": category,
        "source": "s",
        "l2-category": "perception",
    }
    row.update(zip("ABCD", options))
    return row


def test_mmbench_tsv_with_circular_passes(tmp_path):
    red, green = png_base64((255, 0, 0)), png_base64((0, 255, 0))
    hint = 'Look "closely".\nThe\tpicture is small.'  # quotes, a newline and a tab inside a quoted cell
    path = tsv(
        tmp_path / "mmbench_dev_20230712.tsv",
        [
            mm_row(0, "Which animal?", ["cat", "dog"], "B", red, "animals", hint),
            mm_row(1000000, "Which animal?", ["dog", "cat"], "A", "0", "animals", hint),  # image: row 0's
            mm_row(1, "Which colour?", ["red", "green", "blue"], "C", green, "colours"),
            mm_row(1000001, "Which colour?", ["green", "blue", "red"], "B", green, "colours"),
            mm_row(2000001, "Which colour?", ["blue", "red", "green"], "A", "1", "colours"),
        ],
    )
    data = load_benchmark("mmbench", [path])
    assert [q.id for q in data.questions] == ["0", "1000000", "1", "1000001", "2000001"]
    assert data.questions[0].prompt == f"{hint}\nWhich animal?\nA. cat\nB. dog\n{OPTION_LETTER}"
    assert isinstance(data.questions[1].image, EncodedImage)
    assert load_image(data.questions[1].image.decode()).getpixel((0, 0)) == (255, 0, 0)
    predictions = {"0": "B", "1000000": "A.", "1": "C", "1000001": "The answer is blue", "2000001": "B"}
    score = score_benchmark("mmbench", data, predictions)
    # question 0: both passes right; question 1: its third pass wrong, so not counted right
    assert score.metrics == {"accuracy": 0.5, "single_pass_accuracy": 1.0, "unmatched": 0.0, "n": 2.0}
    assert score.groups["category"] == {"animals": {"accuracy": 1.0, "n": 1.0}, "colours": {"accuracy": 0.0, "n": 1.0}}
    assert score.groups["l2-category"] == {"perception": {"accuracy": 0.5, "n": 2.0}}

    partial = score_benchmark("mmbench", data, {k: v for k, v in predictions.items() if k != "2000001"})
    assert partial.metrics["n"] == 1.0 and any("circular pass" in note for note in partial.notes)


def test_mmbench_without_passes_builds_the_rotations(tmp_path):
    path = tsv(tmp_path / "mm.tsv", [mm_row(5, "Which?", ["x", "y", "z"], "B", png_base64((0, 0, 0)), "c")])
    data = load_benchmark("mmbench", [path])
    assert [q.id for q in data.questions] == ["5", "1000005", "2000005"]
    assert [q.reference["answer"] for q in data.questions] == ["B", "A", "C"]  # "y" moves with its option
    assert data.questions[1].prompt.splitlines()[1:4] == ["A. y", "B. z", "C. x"]
    score = score_benchmark("mmbench", data, {"5": "B", "1000005": "A", "2000005": "C"})
    assert score.metrics["accuracy"] == 1.0


def test_mmbench_bad_rows_name_the_row(tmp_path):
    path = tsv(tmp_path / "mm.tsv", [mm_row(5, "Which?", ["x", "y"], "C", png_base64((0, 0, 0)), "c")])
    with pytest.raises(DataError, match=r"mm\.tsv row 2: 'answer' 'C' is not one of its options' letters"):
        load_benchmark("mmbench", [path])
    (tmp_path / "bad.tsv").write_text('index\tquestion\n1\t"never closed\n')
    with pytest.raises(DataError, match="quoted field never closes"):
        read_tsv(tmp_path / "bad.tsv", "MMBench file")


# ---- SEED-Bench ---------------------------------------------------------------------------------


def test_seed_image_questions_by_dimension(tmp_path):
    def seed_question(qid, answer, dimension, data_type="image"):
        return {
            "answer": answer,
            "choice_a": "one",
            "choice_b": "two",
            "choice_c": "three",
            "choice_d": "four",
            "data_id": f"{qid}_img",
            "data_type": data_type,
            "question": f"How many? ({qid})",
            "question_id": qid,
            "question_type_id": dimension,
        }

    content = {
        "questions": [
            seed_question("101", "A", 1),
            seed_question("102", "B", 5),
            seed_question("103", "C", 5),
            seed_question("v1", "D", 10, "video"),
        ],
        "question_type": {"Scene Understanding": 1, "Instances Counting": 5, "Action Recognition": 10},
    }
    (tmp_path / "SEED-Bench.json").write_text(json.dumps(content))
    (tmp_path / "SEED-Bench-image").mkdir()
    data = load_benchmark("seed", [tmp_path / "SEED-Bench.json"])
    assert [q.id for q in data.questions] == ["101", "102", "103"]
    assert data.questions[0].image == tmp_path / "SEED-Bench-image" / "101_img"
    assert data.questions[0].prompt == f"How many? (101)\nA. one\nB. two\nC. three\nD. four\n{OPTION_LETTER}"
    assert "1 non-image (video) questions left out" in data.notes
    score = score_benchmark("seed", data, {"101": "A", "102": "B.", "103": "C"})
    assert score.metrics["accuracy"] == pytest.approx(2 / 3)
    assert score.groups["dimension"] == {
        "Instances Counting": {"accuracy": 0.5, "n": 2.0},
        "Scene Understanding": {"accuracy": 1.0, "n": 1.0},
    }


def test_mmbench_limit_never_counts_a_question_with_passes_left_out(tmp_path):
    image = png_base64((0, 0, 0))
    path = tsv(
        tmp_path / "mm.tsv",
        [
            mm_row(0, "Which?", ["x", "y"], "A", image, "c"),
            mm_row(1000000, "Which?", ["y", "x"], "B", image, "c"),
            mm_row(1, "What?", ["p", "q"], "A", image, "c"),
            mm_row(1000001, "What?", ["q", "p"], "B", image, "c"),
        ],
    )
    data = load_benchmark("mmbench", [path]).limited(3)
    score = score_benchmark("mmbench", data, {"0": "A", "1000000": "B", "1": "A"})
    assert score.metrics["n"] == 1.0 and score.metrics["accuracy"] == 1.0  # question 1 lacks its second pass
