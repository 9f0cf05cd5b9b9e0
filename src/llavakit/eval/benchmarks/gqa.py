"""GQA: the balanced questions JSON (e.g. `testdev_balanced_questions.json`), exact-match accuracy.

The file maps question id -> {imageId, question, answer, types: {structural, semantic, ...}}; images
are `<imageId>.jpg` in the `images/` folder. A reply is compared as LLaVA prepares it for GQA's
`eval.py` (trailing periods stripped, lower case) with the answer, exactly; accuracy is reported
overall and by the question's structural and semantic type, as GQA's evaluation breaks it down.
GQA's consistency, validity, plausibility and grounding need the scene graphs and choices files
and are not computed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Question
from llavakit.eval.benchmarks.files import expect, image_folder, read_json, require, single_path
from llavakit.eval.benchmarks.prompts import short_answer
from llavakit.eval.benchmarks.scoring import score_each
from llavakit.eval.judge import Judge


def gqa_answer(text: str) -> str:
    """A reply as LLaVA hands it to GQA's evaluation: trailing periods stripped, lower case."""
    return text.rstrip(".").lower()


def _question(qid: str, item: object, path: Path, folder: Path) -> Question:
    where = f"GQA questions file {path} question {qid!r}"
    require(expect(item, dict, where, "an object with 'imageId', 'question', 'answer'"), ("imageId", "question"), where)
    types = item.get("types") if isinstance(item.get("types"), dict) else {}
    groups = {name: str(types[name]) for name in ("structural", "semantic") if types.get(name) is not None}
    answer = item.get("answer")
    return Question(
        qid,
        qid,
        short_answer(expect(item["question"], str, where, "a 'question' string")),
        folder / f"{expect(item['imageId'], str, where, 'an imageId string')}.jpg",
        {"answer": expect(answer, str, where, "an 'answer' string")} if answer is not None else None,
        groups,
    )


def load_gqa(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    path = single_path(paths, "gqa", "the balanced questions JSON")
    content = expect(
        read_json(path, "GQA questions file"), dict, f"GQA questions file {path}", "an object by question id"
    )
    folder = image_folder(images, path.parent, ["images"])
    return BenchmarkData(
        "gqa", [_question(str(qid), item, path, folder) for qid, item in content.items()], [path], folder
    )


def _gqa_score(question: Question, prediction: str) -> tuple[float, str]:
    parsed = gqa_answer(prediction)
    return float(parsed == question.reference["answer"]), parsed


def score_gqa(data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None) -> BenchmarkScore:
    return score_each(data, predictions, _gqa_score, ("structural", "semantic"))
