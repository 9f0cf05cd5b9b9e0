"""TextVQA: `TextVQA_0.5.1_val.json`, TextVQA accuracy, optional OCR tokens in the prompt.

`--data TextVQA_0.5.1_val.json [TextVQA_Rosetta_OCR_v0.2_val.json]`: with the Rosetta OCR file the
prompt carries the image's OCR tokens as LLaVA-1.5 asks (`question`, `Reference OCR token: a, b`,
the short-answer line), without it the plain short-answer prompt. Images are `<image_id>.jpg` in
`train_images/` (the val images live there). Scoring: TextVQA's evaluator (both sides
EvalAI-processed, soft accuracy over the ten answers). An answers file made by LLaVA keys answers
by image id and question text; those match through the questions' aliases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llavakit.errors import DataError
from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Question, text_alias
from llavakit.eval.benchmarks.files import expect, image_folder, read_json, require
from llavakit.eval.benchmarks.prompts import OCR_PREFIX, SHORT_ANSWER
from llavakit.eval.benchmarks.scoring import score_each
from llavakit.eval.judge import Judge
from llavakit.eval.vqa import evalai_answer, textvqa_accuracy


def textvqa_prompt(question: str, ocr_tokens: Sequence[str] | None) -> str:
    """The question, the OCR tokens line when there are tokens, the short-answer line."""
    lines = [question]
    if ocr_tokens:
        lines.append(OCR_PREFIX + ", ".join(ocr_tokens))
    lines.append(SHORT_ANSWER)
    return "\n".join(lines)


def _records(content: Any, path: Path) -> list[Any]:
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise DataError(f"TextVQA file {path}: expected an object with a 'data' list")
    return content["data"]


def _split_files(paths: Sequence[Path]) -> tuple[Path, list[Any], dict[str, list[str]] | None]:
    """(questions file, its records, OCR tokens by image id or None)."""
    questions, ocr = None, None
    for path in paths:
        records = _records(read_json(path, "TextVQA file"), path)
        first = records[0] if records and isinstance(records[0], dict) else {}
        if "question" in first:
            if questions is not None:
                raise DataError("textvqa: give one questions file (TextVQA_0.5.1_val.json)")
            questions = (path, records)
        elif "ocr_tokens" in first:
            ocr = {str(item.get("image_id")): list(item.get("ocr_tokens") or []) for item in records}
        else:
            raise DataError(f"TextVQA file {path}: expected TextVQA_0.5.1_*.json or a Rosetta OCR file (ocr_tokens)")
    if questions is None:
        raise DataError("textvqa: --data needs TextVQA_0.5.1_val.json (the questions and answers)")
    return questions[0], questions[1], ocr


def _question(item: Any, index: int, path: Path, folder: Path, ocr: dict[str, list[str]] | None) -> Question:
    where = f"TextVQA file {path} record {index}"
    require(expect(item, dict, where, "an object"), ("question_id", "image_id", "question"), where)
    image_id = expect(item["image_id"], str, where, "an 'image_id' string")
    text = expect(item["question"], str, where, "a 'question' string")
    answers = item.get("answers")
    if answers is not None and (not isinstance(answers, list) or len(answers) < 2):
        raise DataError(f"{where}: expected 'answers', the list of human answers")
    tokens = ocr.get(image_id) if ocr is not None else None
    return Question(
        str(item["question_id"]),
        item["question_id"],
        textvqa_prompt(text, tokens),
        folder / f"{image_id}.jpg",
        {"answers": [str(answer) for answer in answers]} if answers else None,
        {},
        (text_alias(image_id, text),),
    )


def load_textvqa(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    path, records, ocr = _split_files(paths)
    folder = image_folder(images, path.parent, ["train_images"])
    questions = [_question(item, index, path, folder, ocr) for index, item in enumerate(records)]
    data = BenchmarkData("textvqa", questions, list(paths), folder)
    data.notes.append("prompts with OCR tokens" if ocr is not None else "prompts without OCR tokens")
    return data


def _textvqa_score(question: Question, prediction: str) -> tuple[float, str]:
    return textvqa_accuracy(prediction, question.reference["answers"]), evalai_answer(prediction)


def score_textvqa(data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None) -> BenchmarkScore:
    return score_each(data, predictions, _textvqa_score)
