"""VQAv2, VizWiz, GQA and TextVQA read from files in their published formats, scored against hand-computed values.

Each fixture is written here in the official layout (VQAv2 questions / annotations JSON, VizWiz's
list of records, GQA's balanced questions JSON, TextVQA_0.5.1 and the Rosetta OCR file); the
expected numbers follow the official definitions: VQA accuracy min(#humans / 3, 1) over the ten
9-annotator subsets, EvalAI's answer processing for TextVQA and the submission files, GQA exact
match after LLaVA's answer processing.
"""

from __future__ import annotations

import json

import pytest

from llavakit.errors import DataError
from llavakit.eval.answers import read_answers
from llavakit.eval.benchmarks import get_benchmark, load_benchmark, score_benchmark
from llavakit.eval.benchmarks.prompts import SHORT_ANSWER
from llavakit.eval.vqa import evalai_answer, textvqa_accuracy


def write_json(path, value):
    path.write_text(json.dumps(value))
    return path


def answers_file(path, answers):
    """An answers file in LLaVA's format: {question_id, prompt, text, answer_id, model_id, metadata} a line."""
    lines = [
        {"question_id": qid, "prompt": prompt, "text": text, "answer_id": f"a{i}", "model_id": "m", "metadata": {}}
        for i, (qid, prompt, text) in enumerate(answers)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def humans(*pairs):
    """Ten annotator records from (answer, count) pairs, as the annotations JSON stores them."""
    return [
        {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
        for i, a in enumerate(x for x, n in pairs for _ in range(n))
    ]


# ---- answer processing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two apples?", "2 apples"),  # '?' deleted, number word -> digit
        ("1,000", "1000"),  # commas deleted before the VQA steps
        ("It's John's", "it 's john 's"),  # "'s" split off as its own word
        ("The Dog.", "dog"),  # article and sentence period dropped
        ("dont", "don't"),  # contraction restored
        ("black-and-white", "black and white"),
        ("  Yes\n", "yes"),
    ],
)
def test_evalai_answer_processing(text, expected):
    assert evalai_answer(text) == expected


def test_textvqa_accuracy_processes_the_references_too():
    # "coca-cola" becomes "coca cola" like the prediction, so all ten annotators agree with it.
    assert textvqa_accuracy("Coca Cola", ["Coca Cola"] * 3 + ["coca-cola"] * 7) == 1.0
    # "five" -> "5": three annotators said 5; those three see two others (2/3), the seven others see three (1).
    assert textvqa_accuracy("5", ["5"] * 2 + ["five"] + ["6"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)


# ---- VQAv2 --------------------------------------------------------------------------------------


@pytest.fixture
def vqav2(tmp_path):
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 10, "question": "How many dogs?", "question_id": 1},
            {"image_id": 10, "question": "Is it sunny?", "question_id": 2},
            {"image_id": 20, "question": "What colour is the car?", "question_id": 3},
        ],
    }
    annotations = {
        "annotations": [
            {"question_id": 1, "image_id": 10, "answer_type": "number", "answers": humans(("2", 2), ("3", 8))},
            {"question_id": 2, "image_id": 10, "answer_type": "yes/no", "answers": humans(("yes", 10))},
            {"question_id": 3, "image_id": 20, "answer_type": "other", "answers": humans(("red", 3), ("dark red", 7))},
        ]
    }
    (tmp_path / "val2014").mkdir()
    return write_json(tmp_path / "q.json", questions), write_json(tmp_path / "a.json", annotations)


def test_vqav2_reads_the_official_json_and_scores_vqa_accuracy(vqav2, tmp_path):
    questions_file, annotations_file = vqav2
    data = load_benchmark("vqav2", [annotations_file, questions_file])  # any order: told apart by content
    assert [q.id for q in data.questions] == ["1", "2", "3"]
    assert data.questions[0].prompt == f"How many dogs?\n{SHORT_ANSWER}"
    assert data.questions[2].image == tmp_path / "val2014" / "COCO_val2014_000000000020.jpg"
    predictions = {"1": "Two", "2": "Yes.", "3": "The red one"}
    score = score_benchmark("vqav2", data, predictions)
    # "Two" -> "2", said by 2 of 10: the 2 see one other (1/3), the 8 see two (2/3): (2/3 + 16/3) / 10 = 0.6.
    # "The red one" -> "red 1" ("one" is a number word too), said by nobody.
    assert score.metrics["accuracy"] == pytest.approx((0.6 + 1.0 + 0.0) / 3)
    assert score.groups["answer_type"] == {
        "number": {"accuracy": pytest.approx(0.6), "n": 1.0},
        "other": {"accuracy": 0.0, "n": 1.0},
        "yes/no": {"accuracy": 1.0, "n": 1.0},
    }
    assert get_benchmark("vqav2").submission(data, predictions) == [
        {"question_id": 1, "answer": "2"},
        {"question_id": 2, "answer": "yes"},
        {"question_id": 3, "answer": "red 1"},
    ]


def test_vqav2_test_dev_submission_covers_every_test2015_question(tmp_path):
    test_dev = write_json(
        tmp_path / "dev.json",
        {"data_subtype": "test-dev2015", "questions": [{"image_id": 7, "question": "What?", "question_id": 70}]},
    )
    test = write_json(
        tmp_path / "test.json",
        {
            "data_subtype": "test2015",
            "questions": [
                {"image_id": 7, "question": "What?", "question_id": 70},
                {"image_id": 8, "question": "Who?", "question_id": 80},
            ],
        },
    )
    data = load_benchmark("vqav2", [test, test_dev])
    assert [q.id for q in data.questions] == ["70"]  # only test-dev is asked
    assert data.questions[0].image.name == "COCO_test2015_000000000007.jpg"  # test-dev images are test2015's
    score = score_benchmark("vqav2", data, {"70": "A cat."})
    assert score.metrics == {} and "no reference answer" in score.notes[0]
    assert get_benchmark("vqav2").submission(data, {"70": "A cat."}) == [
        {"question_id": 70, "answer": "cat"},
        {"question_id": 80, "answer": ""},
    ]


def test_vqav2_file_of_the_wrong_kind_names_it(tmp_path):
    wrong = write_json(tmp_path / "llava_vqav2.json", [{"question_id": 1, "text": "What?"}])
    with pytest.raises(DataError, match=r"llava_vqav2\.json: expected the official questions JSON"):
        load_benchmark("vqav2", [wrong])


# ---- VizWiz -------------------------------------------------------------------------------------


def test_vizwiz_val_scores_and_test_submission(tmp_path):
    records = [
        {
            "image": "VizWiz_val_00000000.jpg",
            "question": "What is this?",
            "answers": humans(("unanswerable", 10)),
            "answer_type": "unanswerable",
            "answerable": 0,
        },
        {
            "image": "VizWiz_val_00000001.jpg",
            "question": "What colour is the shirt?",
            "answers": humans(("blue", 2), ("light blue", 8)),
            "answer_type": "other",
            "answerable": 1,
        },
    ]
    (tmp_path / "val").mkdir()
    data = load_benchmark("vizwiz", [write_json(tmp_path / "val.json", records)])
    assert data.image_folder == tmp_path / "val"
    assert data.questions[0].prompt == (
        "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER
    )
    predictions = {"VizWiz_val_00000000.jpg": "Unanswerable", "VizWiz_val_00000001.jpg": "Blue."}
    score = score_benchmark("vizwiz", data, predictions)
    assert score.metrics["accuracy"] == pytest.approx((1.0 + 0.6) / 2)
    assert score.groups["answer_type"]["unanswerable"]["accuracy"] == 1.0
    assert score.groups["answer_type"]["other"]["accuracy"] == pytest.approx(0.6)

    test = write_json(tmp_path / "test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "What?"}])
    test_data = load_benchmark("vizwiz", [test])
    assert score_benchmark("vizwiz", test_data, {"VizWiz_test_00000000.jpg": "Unanswerable"}).metrics == {}
    submission = get_benchmark("vizwiz").submission(test_data, {"VizWiz_test_00000000.jpg": "Unanswerable"})
    assert submission == [{"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"}]


# ---- GQA ----------------------------------------------------------------------------------------


def test_gqa_exact_match_after_llava_processing_by_type(tmp_path):
    questions = {
        "201": {
            "imageId": "n1",
            "question": "Which side?",
            "answer": "left",
            "types": {"structural": "query", "semantic": "rel"},
        },
        "202": {
            "imageId": "n1",
            "question": "Is it red?",
            "answer": "yes",
            "types": {"structural": "verify", "semantic": "attr"},
        },
        "203": {
            "imageId": "n2",
            "question": "What is it?",
            "answer": "table",
            "types": {"structural": "query", "semantic": "obj"},
        },
    }
    data = load_benchmark("gqa", [write_json(tmp_path / "testdev_balanced_questions.json", questions)])
    assert data.questions[0].image == tmp_path / "n1.jpg"
    score = score_benchmark("gqa", data, {"201": "Left.", "202": "Yes", "203": "The table"})
    assert score.metrics["accuracy"] == pytest.approx(2 / 3)  # "the table" != "table": GQA compares exactly
    assert score.groups["structural"]["query"]["accuracy"] == 0.5
    assert score.groups["semantic"] == {
        "attr": {"accuracy": 1.0, "n": 1.0},
        "obj": {"accuracy": 0.0, "n": 1.0},
        "rel": {"accuracy": 1.0, "n": 1.0},
    }


# ---- TextVQA ------------------------------------------------------------------------------------


@pytest.fixture
def textvqa(tmp_path):
    questions = {
        "dataset_name": "textvqa",
        "data": [
            {
                "question_id": 11,
                "image_id": "img1",
                "question": "What brand is it?",
                "answers": ["Coca Cola"] * 3 + ["coca-cola"] * 7,
            },
            {
                "question_id": 12,
                "image_id": "img2",
                "question": "What number?",
                "answers": ["5"] * 2 + ["five"] + ["6"] * 7,
            },
        ],
    }
    ocr = {"data": [{"image_id": "img1", "ocr_tokens": ["COCA", "COLA"], "ocr_info": []}]}
    return write_json(tmp_path / "TextVQA_0.5.1_val.json", questions), write_json(tmp_path / "ocr.json", ocr)


def test_textvqa_prompts_with_ocr_tokens_and_scores(textvqa):
    questions, ocr = textvqa
    plain = load_benchmark("textvqa", [questions])
    assert plain.questions[0].prompt == f"What brand is it?\n{SHORT_ANSWER}"
    data = load_benchmark("textvqa", [questions, ocr])
    assert data.questions[0].prompt == f"What brand is it?\nReference OCR token: COCA, COLA\n{SHORT_ANSWER}"
    assert data.questions[1].prompt == f"What number?\n{SHORT_ANSWER}"  # no tokens for img2: no OCR line
    score = score_benchmark("textvqa", data, {"11": "coca cola", "12": "5"})
    assert score.metrics["accuracy"] == pytest.approx((1.0 + 0.9) / 2)


def test_textvqa_answers_keyed_as_llava_writes_them(textvqa, tmp_path):
    """LLaVA's TextVQA answers carry the image id as question_id; the question text in the prompt tells them apart."""
    questions, ocr = textvqa
    data = load_benchmark("textvqa", [questions, ocr])
    path = answers_file(
        tmp_path / "llava.jsonl",
        [
            ("img1", f"What brand is it?\nReference OCR token: COCA, COLA\n{SHORT_ANSWER}", "Coca-Cola"),
            ("img2", f"What number?\n{SHORT_ANSWER}", "6"),
            ("img9", f"Unknown?\n{SHORT_ANSWER}", "x"),
        ],
    )
    answers = read_answers(path, data)
    assert answers.predictions == {"11": "Coca-Cola", "12": "6"}
    assert answers.unknown == ["img9"]
