"""SEED-Bench (image): `SEED-Bench.json`, accuracy per evaluation dimension.

The file holds `questions` (question_id, question, choice_a..choice_d, answer letter, data_id,
data_type, question_type_id) and `question_type` (dimension name -> id). The image questions
(data_type "image", dimensions 1-9) are asked, with the image `SEED-Bench-image/<data_id>`;
video questions are left out and counted in the notes. Prompt: the question, "A. ..." per
choice, the letter instruction. A reply is right when it is the answer letter, as LLaVA's
`convert_seed_for_submission.py` compares; accuracy overall (all image questions together) and
per dimension.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llavakit.errors import DataError
from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Question
from llavakit.eval.benchmarks.choices import seed_choice
from llavakit.eval.benchmarks.files import expect, image_folder, read_json, require, single_path
from llavakit.eval.benchmarks.prompts import multiple_choice
from llavakit.eval.benchmarks.scoring import score_each
from llavakit.eval.judge import Judge

CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")


def _dimension_names(content: Mapping[str, Any]) -> dict[int, str]:
    types = content.get("question_type") if isinstance(content.get("question_type"), dict) else {}
    return {int(number): str(name) for name, number in types.items() if isinstance(number, int)}


def _question(item: Any, index: int, path: Path, folder: Path, names: Mapping[int, str]) -> Question:
    where = f"SEED-Bench file {path} question {index}"
    require(expect(item, dict, where, "an object"), ("question_id", "question", *CHOICE_KEYS, "data_id"), where)
    dimension = item.get("question_type_id")
    answer = item.get("answer")
    if answer is not None and answer not in ("A", "B", "C", "D"):
        raise DataError(f"{where}: 'answer' must be A, B, C or D, got {answer!r}")
    prompt = multiple_choice(str(item["question"]), [str(item[key]) for key in CHOICE_KEYS])
    groups = {"dimension": names.get(dimension, str(dimension))} if dimension is not None else {}
    image = folder / expect(item["data_id"], str, where, "a 'data_id' image file name")
    qid = item["question_id"]
    return Question(str(qid), qid, prompt, image, {"answer": answer} if answer else None, groups)


def load_seed(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    path = single_path(paths, "seed", "SEED-Bench.json")
    content = read_json(path, "SEED-Bench file")
    if not isinstance(content, dict) or not isinstance(content.get("questions"), list):
        raise DataError(f"SEED-Bench file {path}: expected an object with a 'questions' list")
    folder = image_folder(images, path.parent, ["SEED-Bench-image"])
    names = _dimension_names(content)
    items = content["questions"]
    for index, item in enumerate(items):
        expect(item, dict, f"SEED-Bench file {path} question {index}", "an object")
    image_items = [(index, item) for index, item in enumerate(items) if item.get("data_type") == "image"]
    questions = [_question(item, index, path, folder, names) for index, item in image_items]
    data = BenchmarkData("seed", questions, [path], folder)
    if len(image_items) < len(items):
        data.notes.append(f"{len(items) - len(image_items)} non-image (video) questions left out")
    return data


def _seed_score(question: Question, prediction: str) -> tuple[float, str | None]:
    letter = seed_choice(prediction)
    return float(letter == question.reference["answer"]), letter


def score_seed(data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None) -> BenchmarkScore:
    return score_each(data, predictions, _seed_score, ("dimension",))
