"""Question files: reading, checking, choosing the task, and the baselines a set implies.

A question file is JSONL (one object a line) or a JSON list, as `llavakit data synth`
writes `eval_vqa.jsonl`, `eval_counting.jsonl`, `eval_ocr.jsonl`, `eval_region.jsonl` and
`eval_pope.jsonl`. Each record holds

- `id` (unique), `answer` (see `metrics` for what each task expects),
- `question` and / or `prompt` (the question plus the response-format line; the model is
  asked the prompt when there is one, as LLaVA-1.5 evaluates),
- `image`: a path relative to the image folder (leave it out for a text-only question),
- optional `category`, `strategy` (POPE), `num_choices` (answers a uniform guesser picks from).

The task comes from the file name when not given (`infer_task`), and the two baselines
beside every metric come from `llavakit.eval.baselines`: `chance` (uniform guessing among
`num_choices`) and `majority` (always the most common answer of the question's category).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavakit.errors import DataError
from llavakit.eval.metrics import get_task

Question = dict[str, Any]

# File-name words -> task; checked in this order, the first found wins.
_TASKS_BY_NAME = (("pope", "pope"), ("count", "counting"), ("vqa", "vqa"), ("ocr", "exact"), ("region", "exact"))


def set_name(path: str | Path) -> str:
    """What tables call a file's questions: `eval_vqa.jsonl` -> `vqa`."""
    stem = Path(path).name.split(".")[0]
    return stem.removeprefix("eval_") or stem


def read_questions(path: str | Path) -> list[Question]:
    """The records of a `.jsonl` or `.json` question file; a bad line raises naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from error
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            raise DataError(f"{path}: not valid JSON: {error}") from error
        if not isinstance(records, list):
            raise DataError(f"{path}: a .json question file must hold a list of records")
        where = [f"{path} record {index}" for index in range(len(records))]
    else:
        records, where = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError) as error:
                raise DataError(f"{path} line {number}: not valid JSON: {error}") from error
            where.append(f"{path} line {number}")
    for record, place in zip(records, where):
        if not isinstance(record, dict):
            raise DataError(f"{place}: a question must be a JSON object, got {type(record).__name__}")
    if not records:
        raise DataError(f"question file {path} holds no questions")
    return records


def infer_task(path: str | Path, questions: Sequence[Mapping[str, Any]]) -> str:
    """The task for a question file: by the first of pope / count / vqa / ocr / region in its name.

    A `vqa` file whose answers are single strings (the synthetic world's) is scored by
    normalised exact match (`exact`), since VQA accuracy needs the human answers; a name
    with none of the words gets `vqa` when every answer is a list of them, else `exact`.
    """
    name = Path(path).name.lower()
    task = next((task for word, task in _TASKS_BY_NAME if word in name), None)
    if task in (None, "vqa"):
        human_lists = all(isinstance(q.get("answer"), (list, tuple)) and len(q["answer"]) > 1 for q in questions)
        task = "vqa" if human_lists else "exact"
    return task


def _is_unicode(text: str) -> bool:
    """False for text with lone surrogates, which JSON allows and no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_questions(questions: Sequence[Mapping[str, Any]], task: str) -> None:
    """Raise a DataError naming the first bad question: missing fields, a repeated id, a bad answer."""
    scoring = get_task(task)
    seen: set[Any] = set()
    for index, question in enumerate(questions):
        qid = question.get("id")
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise DataError(f"question {index} needs an 'id' (a string or integer), got {qid!r}")
        if qid in seen:
            raise DataError(f"question id {qid!r} appears twice")
        seen.add(qid)
        text = question.get("prompt") or question.get("question")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"question {qid!r} has no 'prompt' or 'question' text")
        if not _is_unicode(text):
            raise DataError(f"question {qid!r}: its text holds a lone surrogate (e.g. \\ud800), not a character")
        image = question.get("image")
        if image is not None and not isinstance(image, str):
            raise DataError(f"question {qid!r}: 'image' must be a relative path string, got {image!r}")
        if "answer" not in question:
            raise DataError(f"question {qid!r} has no 'answer'")
        scoring.check_answer(question["answer"], qid)


@dataclass(frozen=True)
class QuestionSet:
    """One question file, read and checked: its table name, task and records."""

    name: str
    path: Path
    task: str
    questions: list[Question]


def load_question_set(path: str | Path, task: str | None = None) -> QuestionSet:
    """Read and check a question file; `task` None: from the file name (`infer_task`)."""
    path = Path(path)
    questions = read_questions(path)
    task = task or infer_task(path, questions)
    try:
        check_questions(questions, task)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from error
    return QuestionSet(set_name(path), path, task, questions)
