"""VQAv2 and VizWiz: the official questions / annotations JSON, VQA accuracy, server submission files.

VQAv2 (`--data` the questions JSON, e.g. `v2_OpenEnded_mscoco_val2014_questions.json`, plus its
annotations JSON when scoring locally; for test-dev also `v2_OpenEnded_mscoco_test2015_questions.json`:
the server wants an entry for every test2015 question, so the others get an empty answer).
Images are `COCO_<subset>_<image_id:012d>.jpg` (test-dev uses the test2015 images).
VizWiz (`--data` `val.json` or `test.json`: a list of {image, question, answers, answer_type,
answerable}). Both score a reply by VQA accuracy against the ten human answers after the
official normalisation (`llavakit.eval.vqa`), with a breakdown by answer type (VizWiz's
"unanswerable" is one); submission answers are EvalAI-processed, as LLaVA writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llavakit.errors import DataError
from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Question
from llavakit.eval.benchmarks.files import expect, image_folder, read_json, require, single_path
from llavakit.eval.benchmarks.prompts import SHORT_ANSWER, UNANSWERABLE, short_answer
from llavakit.eval.benchmarks.scoring import score_each
from llavakit.eval.judge import Judge
from llavakit.eval.vqa import evalai_answer, normalize_answer, vqa_accuracy

VQAV2_FILES = "the questions JSON, and its annotations JSON to score locally"


def _human_answers(value: Any, where: str) -> list[str]:
    """The annotators' answers: a list of {"answer": ...} (or of strings), at least two."""
    items = expect(value, list, where, "a list of the annotators' answers")
    answers = [item.get("answer") if isinstance(item, dict) else item for item in items]
    if len(answers) < 2 or not all(isinstance(answer, str) for answer in answers):
        raise DataError(f"{where}: expected the annotators' answers (at least two strings), got {items!r:.80}")
    return answers


# ---- VQAv2 ----------------------------------------------------------------------------------


def _vqav2_files(paths: Sequence[Path]) -> tuple[dict, dict | None, dict | None, Path]:
    """(questions to ask, annotations, test2015 questions for the submission, the questions file)."""
    questions, annotations = [], []
    for path in paths:
        content = read_json(path, "VQAv2 file")
        if isinstance(content, dict) and "annotations" in content:
            annotations.append(content)
        elif isinstance(content, dict) and "questions" in content:
            questions.append((path, content))
        else:
            raise DataError(
                f"VQAv2 file {path}: expected the official questions JSON (with 'questions') "
                "or annotations JSON (with 'annotations')"
            )
    if len(annotations) > 1:
        raise DataError("VQAv2: give one annotations JSON")
    fill = [item for item in questions if item[1].get("data_subtype") == "test2015"] if len(questions) == 2 else []
    asked = [item for item in questions if not any(item is other for other in fill)]
    if len(asked) != 1:
        raise DataError(
            "VQAv2: give one questions JSON to ask (plus, for test-dev, the test2015 questions JSON), "
            f"got {len(questions)} questions files"
        )
    path, content = asked[0]
    return content, annotations[0] if annotations else None, fill[0][1] if fill else None, path


def _annotations_by_id(annotations: dict | None) -> dict[int, dict]:
    if annotations is None:
        return {}
    items = expect(annotations["annotations"], list, "VQAv2 annotations", "a list under 'annotations'")
    return {item["question_id"]: item for item in items if isinstance(item, dict) and "question_id" in item}


def load_vqav2(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    """The asked questions, each with its human answers when the annotations are given."""
    content, annotations, fill, path = _vqav2_files(paths)
    subset = str(content.get("data_subtype", "val2014"))
    image_subset = "test2015" if subset.startswith("test") else subset
    folder = image_folder(images, path.parent, [image_subset])
    by_id = _annotations_by_id(annotations)
    items = expect(content["questions"], list, f"VQAv2 questions file {path}", "a list under 'questions'")
    questions = []
    for index, item in enumerate(items):
        where = f"VQAv2 questions file {path} question {index}"
        require(expect(item, dict, where, "an object"), ("question_id", "image_id", "question"), where)
        qid = expect(item["question_id"], int, where, "an integer 'question_id'")
        image_id = expect(item["image_id"], int, where, "an integer 'image_id'")
        annotation = by_id.get(qid)
        reference = (
            {"answers": _human_answers(annotation.get("answers"), f"VQAv2 annotation {qid}")} if annotation else None
        )
        questions.append(
            Question(
                str(qid),
                qid,
                short_answer(expect(item["question"], str, where, "a 'question' string")),
                folder / f"COCO_{image_subset}_{image_id:012d}.jpg",
                reference,
                {"answer_type": annotation["answer_type"]} if annotation and "answer_type" in annotation else {},
            )
        )
    data = BenchmarkData("vqav2", questions, list(paths), folder)
    if annotations is not None and not by_id.keys() & {q.source_id for q in questions}:
        raise DataError("VQAv2: the annotations JSON annotates none of the questions (a different split?)")
    if fill is not None:
        data.extras["submission_ids"] = [item["question_id"] for item in fill["questions"] if isinstance(item, dict)]
    return data


def _vqa_score(question: Question, prediction: str) -> tuple[float, str]:
    return vqa_accuracy(prediction, question.reference["answers"]), normalize_answer(prediction)


def score_vqa(data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None) -> BenchmarkScore:
    """VQA accuracy per question, averaged overall and per answer type."""
    return score_each(data, predictions, _vqa_score, ("answer_type",))


def vqav2_submission(data: BenchmarkData, predictions: Mapping[str, str]) -> list[dict[str, Any]]:
    """[{"question_id", "answer"}] for the server: every question (every test2015 one when given), "" unanswered."""
    answers = {q.source_id: evalai_answer(predictions[q.id]) for q in data.questions if q.id in predictions}
    ids = data.extras.get("submission_ids") or [q.source_id for q in data.questions]
    return [{"question_id": qid, "answer": answers.get(qid, "")} for qid in ids]


# ---- VizWiz ---------------------------------------------------------------------------------


def vizwiz_prompt(question: str) -> str:
    """LLaVA-1.5's VizWiz prompt: the question, the unanswerable instruction, the short-answer one."""
    return f"{question}\n{UNANSWERABLE}\n{SHORT_ANSWER}"


def _vizwiz_question(item: Any, index: int, path: Path, folder: Path) -> Question:
    where = f"VizWiz file {path} record {index}"
    require(expect(item, dict, where, "an object with 'image' and 'question'"), ("image", "question"), where)
    name = expect(item["image"], str, where, "an image file name")
    answers = item.get("answers")
    reference = {"answers": _human_answers(answers, where)} if answers else None
    groups = {"answer_type": str(item["answer_type"])} if reference and "answer_type" in item else {}
    question = expect(item["question"], str, where, "a 'question' string")
    return Question(name, name, vizwiz_prompt(question), folder / name, reference, groups, (str(index),))


def load_vizwiz(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    """VizWiz questions by image name (one question per image); the answers file's index is an alias."""
    path = single_path(paths, "vizwiz", "val.json or test.json")
    items = expect(read_json(path, "VizWiz file"), list, f"VizWiz file {path}", "a list of {image, question} records")
    first = items[0].get("image", "") if items and isinstance(items[0], dict) else ""
    split = first.split("_")[1] if isinstance(first, str) and first.count("_") >= 2 else path.stem
    folder = image_folder(images, path.parent, [split])
    questions = [_vizwiz_question(item, index, path, folder) for index, item in enumerate(items)]
    if len({q.id for q in questions}) != len(questions):
        raise DataError(f"VizWiz file {path}: an image appears twice (one question per image is expected)")
    return BenchmarkData("vizwiz", questions, [path], folder)


def vizwiz_submission(data: BenchmarkData, predictions: Mapping[str, str]) -> list[dict[str, str]]:
    """[{"image", "answer"}] for the server, every question, "" unanswered."""
    return [{"image": q.id, "answer": evalai_answer(predictions.get(q.id, ""))} for q in data.questions]
