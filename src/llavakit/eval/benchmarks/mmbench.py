"""MMBench: the TSV with base64 images (e.g. `mmbench_dev_20230712.tsv`), option extraction, circular evaluation.

Columns: index, question, hint, A, B, C, D, answer, category, image (base64), l2-category, ...
A question with n options is asked n times with its options rotated ("circular evaluation"); it
counts as right only when every pass is. The published dev TSV already holds the rotated passes
as rows whose index is the question's index plus k * 1,000,000 (the TSVs may also point a row's
image at another row by index); a TSV without them gets the rotations built here, in the same
numbering. Prompt: the hint, the question, "A. ..." per option, the letter instruction.
Replies are matched to an option by MMBench's rule-based matching (`choices.mmbench_choice`; no
LLM fallback: an unmatched reply is wrong, and the share of them is reported). Metrics: circular
accuracy overall and per category and l2-category, and the accuracy of the first pass alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from llavakit.errors import DataError
from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, EncodedImage, Metrics, Question
from llavakit.eval.benchmarks.choices import mmbench_choice
from llavakit.eval.benchmarks.files import read_tsv, single_path
from llavakit.eval.benchmarks.prompts import multiple_choice, option_letters
from llavakit.eval.benchmarks.scoring import coverage_notes, group_values, mean, record, scorable
from llavakit.eval.judge import Judge

CIRCULAR_STEP = 1_000_000
GROUP_FIELDS = ("category", "l2-category")
_ABSENT = ("", "nan", "none")


def _value(row: Mapping[str, str], column: str) -> str | None:
    """A cell, or None when the column is missing or the cell is empty / nan / none (as pandas writes gaps)."""
    cell = row.get(column)
    return None if cell is None or cell.strip().lower() in _ABSENT else cell


def _options(row: Mapping[str, str]) -> list[str]:
    """The options A, B, ... up to the first absent one."""
    options = []
    for letter in option_letters(26):
        value = _value(row, letter)
        if value is None:
            break
        options.append(value)
    return options


def _index(row: Mapping[str, str], where: str) -> int:
    text = (row.get("index") or "").strip()
    try:
        return int(float(text)) if text.endswith(".0") else int(text)
    except ValueError:
        raise DataError(f"{where}: 'index' must be a whole number, got {text!r}") from None


def _image(row: Mapping[str, str], images: Mapping[int, str], where: str) -> EncodedImage:
    """The row's base64 image, or the image of the row its short numeric `image` cell points at."""
    cell = (row.get("image") or "").strip()
    if not cell:
        raise DataError(f"{where} has no 'image'")
    if len(cell) <= 64 and cell.isdigit():
        if int(cell) not in images:
            raise DataError(f"{where}: 'image' points at row index {cell}, which has no image")
        cell = images[int(cell)]
    return EncodedImage(cell, where)


def _question(index: int, row: Mapping[str, str], options: list[str], image: EncodedImage, turn: int) -> Question:
    """Pass `turn` of a question: its options rotated left by `turn`, the answer letter moved along."""
    rotated = options[turn:] + options[:turn]
    answer = _value(row, "answer")
    reference = None
    if answer is not None:
        answer_index = option_letters(len(options)).index(answer.strip())
        reference = {"answer": option_letters(len(options))[(answer_index - turn) % len(options)], "options": rotated}
    qid = index + turn * CIRCULAR_STEP
    groups = {name: value for name in GROUP_FIELDS if (value := _value(row, name)) is not None}
    prompt = multiple_choice(row["question"], rotated, _value(row, "hint"))
    return Question(str(qid), qid, prompt, image, reference, {"circular": str(index % CIRCULAR_STEP), **groups})


def _check_row(row: Mapping[str, str], where: str) -> list[str]:
    for column in ("index", "question", "image"):
        if column not in row:
            raise DataError(f"{where} has no {column!r} column; expected MMBench's TSV (index, question, A, B, ...)")
    options = _options(row)
    if len(options) < 2:
        raise DataError(f"{where}: expected at least two options in columns A, B, ...")
    answer = _value(row, "answer")
    if answer is not None and answer.strip() not in option_letters(len(options)):
        raise DataError(f"{where}: 'answer' {answer!r} is not one of its options' letters")
    return options


def load_mmbench(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    path = single_path(paths, "mmbench", "the MMBench TSV")
    rows = read_tsv(path, "MMBench file")
    where = [f"MMBench file {path} row {number}" for number in range(2, len(rows) + 2)]
    indexes = [_index(row, place) for row, place in zip(rows, where)]
    encoded = {index: row["image"] for index, row in zip(indexes, rows) if len(row.get("image", "")) > 64}
    has_passes = any(index >= CIRCULAR_STEP for index in indexes)
    questions = []
    for index, row, place in zip(indexes, rows, where):
        options = _check_row(row, place)
        image = _image(row, encoded, place)
        turns = 1 if has_passes or _value(row, "answer") is None else len(options)
        questions += [_question(index, row, options, image, turn) for turn in range(turns)]
    if len({q.id for q in questions}) != len(questions):
        raise DataError(f"MMBench file {path}: an index appears twice")
    data = BenchmarkData("mmbench", questions, [path], None)
    data.extras["passes"] = _pass_counts(questions)  # of the whole file, so --limit cannot shorten a question
    if not has_passes and any(q.reference is not None for q in questions):
        data.notes.append("the TSV has no circular passes: each question is also asked with its options rotated")
    return data


def _pass_counts(questions: Sequence[Question]) -> dict[str, int]:
    """How many passes each question has (its rows sharing index % 1,000,000)."""
    counts: dict[str, int] = {}
    for question in questions:
        counts[question.groups["circular"]] = counts.get(question.groups["circular"], 0) + 1
    return counts


def _circular(records: Sequence[Mapping], sizes: Mapping[str, int]) -> tuple[dict[str, bool], int]:
    """Circular hit per question whose every pass was answered; and how many questions lack a pass."""
    by_question = group_values(records, "circular")
    complete = {key: members for key, members in by_question.items() if len(members) == sizes[key]}
    return {key: all(item["score"] == 1.0 for item in members) for key, members in complete.items()}, len(
        by_question
    ) - len(complete)


def _group_metrics(hits: Mapping[str, bool], first_pass: Mapping[str, Mapping], field: str) -> dict[str, Metrics]:
    buckets: dict[str, list[bool]] = {}
    for key, hit in hits.items():
        value = first_pass.get(key, {}).get(field)
        if value is not None:
            buckets.setdefault(str(value), []).append(hit)
    return {value: {"accuracy": mean(items), "n": float(len(items))} for value, items in sorted(buckets.items())}


def score_mmbench(data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None) -> BenchmarkScore:
    records = []
    for question in scorable(data, predictions):
        choice = mmbench_choice(predictions[question.id], question.reference["options"])
        correct = float(choice == question.reference["answer"])
        records.append(record(question, predictions[question.id], correct, choice, answer=question.reference["answer"]))
    notes = coverage_notes(data, predictions)
    if not records:
        return BenchmarkScore({}, {}, records, notes)
    hits, incomplete = _circular(records, data.extras.get("passes") or _pass_counts(data.questions))
    if incomplete:
        notes.append(f"{incomplete} questions lack an answer to some circular pass and are left out of the accuracy")
    first_pass = {item["circular"]: item for item in records if int(item["question_id"]) < CIRCULAR_STEP}
    metrics = {
        "accuracy": mean(list(hits.values())),
        "single_pass_accuracy": mean([item["score"] for item in first_pass.values()]),
        "unmatched": mean([item["parsed"] is None for item in records]),
        "n": float(len(hits)),
    }
    groups = {field: _group_metrics(hits, first_pass, field) for field in GROUP_FIELDS}
    return BenchmarkScore(metrics, {field: values for field, values in groups.items() if values}, records, notes)
