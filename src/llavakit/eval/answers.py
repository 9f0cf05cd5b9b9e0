"""Answers files in LLaVA's format: one JSON object a line with `question_id`, `prompt`, `text`,
`answer_id`, `model_id`, `metadata`, as LLaVA's `model_vqa*.py` scripts write them.

Why this format: answers made by llavakit can be scored by the benchmarks' own tools, and
answers made elsewhere can be scored here (`llavakit eval score`). Answers are keyed by question
id; an answer whose id is not one of ours is matched through the question's aliases (the id
scheme another tool uses, or its id plus the question text of its `prompt`, as LLaVA's TextVQA
and MME files need). A run appends each batch's answers and flushes them, so an interrupted run
loses at most the batch in flight, and a rerun skips every question already answered.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavakit.errors import DataError
from llavakit.eval.benchmarks.base import BenchmarkData, Question
from llavakit.eval.benchmarks.prompts import question_line

AnswerLine = tuple[int, dict[str, Any]]


def answer_record(question: Question, text: str, model_id: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """One line of an answers file, for `question` answered with `text`."""
    return {
        "question_id": question.source_id,
        "prompt": question.prompt,
        "text": text,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": dict(metadata),
    }


def append_answers(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append `records` to the answers file and flush, so they survive an interruption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", newline="\n") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        handle.flush()


def _drop_cut_line(path: Path, data: bytes) -> bytes:
    """An answers file of ours whose last line was cut off mid-write loses that line (on disk too)."""
    if not data or data.endswith(b"\n"):
        return data
    kept = data[: data.rfind(b"\n") + 1]
    with open(path, "r+b") as handle:
        handle.truncate(len(kept))
    return kept


def read_answer_lines(path: Path, own: bool = False) -> list[AnswerLine]:
    """(line number, record) per answer. `own`: a file this runner writes, whose cut-off last line is dropped."""
    if not path.is_file():
        raise DataError(f"answers file {path} does not exist")
    data = path.read_bytes()
    if own:
        data = _drop_cut_line(path, data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"answers file {path}: not UTF-8 ({error.reason} at byte {error.start})") from error
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"answers file {path} line {number}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            raise DataError(f"{where}: not valid JSON ({error})") from error
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with 'question_id' and 'text'")
        _check_answer(record, where)
        lines.append((number, record))
    return lines


def _check_answer(record: Mapping[str, Any], where: str) -> None:
    qid = record.get("question_id")
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise DataError(f"{where}: 'question_id' must be a string or an integer, got {qid!r}")
    if not isinstance(record.get("text"), str):
        raise DataError(f"{where}: 'text' (the model's answer) must be a string, got {record.get('text')!r}")


@dataclass
class ResolvedAnswers:
    """Answers matched to questions: `predictions` by question id; `unknown` lists answers matching none."""

    predictions: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def _alias_index(questions: Sequence[Question]) -> dict[str, str]:
    index: dict[str, str] = {}
    for question in questions:
        for alias in question.aliases:
            index.setdefault(alias, question.id)
    return index


def resolve_answers(data: BenchmarkData, lines: Sequence[AnswerLine], path: Path) -> ResolvedAnswers:
    """Match each answer to its question (id, else alias, else id + question text); a question answered
    twice raises naming both lines."""
    ids = {question.id for question in data.questions}
    aliases = _alias_index(data.questions)
    resolved = ResolvedAnswers()
    first_line: dict[str, int] = {}
    for number, record in lines:
        key = str(record["question_id"])
        prompt = record.get("prompt")
        by_text = f"{key}\t{question_line(prompt)}" if isinstance(prompt, str) else None
        qid = key if key in ids else aliases.get(key) or aliases.get(by_text or "")
        if qid is None:
            resolved.unknown.append(key)
            continue
        if qid in first_line:
            raise DataError(
                f"answers file {path} lines {first_line[qid]} and {number} both answer question {qid!r}; keep one"
            )
        first_line[qid] = number
        resolved.predictions[qid] = record["text"]
    return resolved


def read_answers(path: Path, data: BenchmarkData, own: bool = False) -> ResolvedAnswers:
    """An answers file read and matched to `data`'s questions."""
    return resolve_answers(data, read_answer_lines(path, own), path)
