"""ScienceQA-IMG: `problems.json` + `pid_splits.json` (the ScienceQA repository's `data/scienceqa`).

`--data` the folder holding both (or the two files). The test problems with an image are asked
(ScienceQA-IMG, the column of the LLaVA tables); images are `<image folder>/<pid>/<image>`
(default image folder: `images/test` or `test` next to the files). The prompt is LLaVA-1.5's:
"Context: <hint>" when there is a hint, the question, the choices as "A. ...", the letter
instruction. Replies are read as LLaVA's `eval_science_qa.py` reads them
(`choices.scienceqa_choice`); accuracy overall and by subject, context (a text hint or none)
and grade band (1-6, 7-12), as ScienceQA's evaluation breaks it down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llavakit.errors import DataError
from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Question
from llavakit.eval.benchmarks.choices import scienceqa_choice
from llavakit.eval.benchmarks.files import expect, file_in, image_folder, read_json, require
from llavakit.eval.benchmarks.prompts import multiple_choice, option_letters
from llavakit.eval.benchmarks.scoring import score_each
from llavakit.eval.judge import Judge

SPLIT = "test"
_SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


def _files(paths: Sequence[Path]) -> tuple[Path, Path]:
    if len(paths) == 1 and paths[0].is_dir():
        return file_in(paths[0], "problems.json", "scienceqa"), file_in(paths[0], "pid_splits.json", "scienceqa")
    by_name = {path.name: path for path in paths}
    if set(by_name) != {"problems.json", "pid_splits.json"}:
        raise DataError("scienceqa: --data takes the folder holding problems.json and pid_splits.json, or those two")
    return by_name["problems.json"], by_name["pid_splits.json"]


def grade_band(grade: str) -> str:
    """`grade3` -> `1-6`, `grade10` -> `7-12`."""
    number = grade.removeprefix("grade")
    return ("1-6" if int(number) <= 6 else "7-12") if number.isdigit() else grade


def _question(pid: str, problem: Any, problems: Path, folder: Path) -> Question:
    where = f"ScienceQA problems.json {problems} problem {pid!r}"
    require(expect(problem, dict, where, "an object"), ("question", "choices", "answer", "image"), where)
    choices = expect(problem["choices"], list, where, "a 'choices' list")
    answer = expect(problem["answer"], int, where, "an integer 'answer' (the choice index)")
    if not 0 <= answer < len(choices) <= 5:
        raise DataError(f"{where}: 'answer' {answer} does not index its {len(choices)} choices (at most 5)")
    hint = str(problem.get("hint") or "").strip()
    groups = {
        "subject": _SUBJECTS.get(str(problem.get("subject")), str(problem.get("subject"))),
        "context": "text" if hint else "none",
        "grade": grade_band(str(problem.get("grade", ""))),
    }
    prompt = multiple_choice(str(problem["question"]), [str(c) for c in choices], f"Context: {hint}" if hint else None)
    reference = {"answer": option_letters(len(choices))[answer], "num_choices": len(choices)}
    return Question(pid, pid, prompt, folder / pid / str(problem["image"]), reference, groups)


def load_scienceqa(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    problems_path, splits_path = _files(paths)
    problems = expect(read_json(problems_path, "ScienceQA file"), dict, str(problems_path), "an object by problem id")
    splits = expect(read_json(splits_path, "ScienceQA file"), dict, str(splits_path), "an object by split")
    if not isinstance(splits.get(SPLIT), list):
        raise DataError(f"ScienceQA {splits_path}: expected a {SPLIT!r} list of problem ids")
    missing = [pid for pid in splits[SPLIT] if str(pid) not in problems]
    if missing:
        raise DataError(f"ScienceQA {splits_path}: test problem {missing[0]!r} is not in {problems_path}")
    folder = image_folder(images, problems_path.parent, ["images/test", "test"])
    for pid in splits[SPLIT]:
        expect(problems[str(pid)], dict, f"ScienceQA {problems_path} problem {pid!r}", "an object")
    with_image = [str(pid) for pid in splits[SPLIT] if problems[str(pid)].get("image")]
    questions = [_question(pid, problems[pid], problems_path, folder) for pid in with_image]
    data = BenchmarkData("scienceqa", questions, [problems_path, splits_path], folder)
    data.notes.append(f"ScienceQA-IMG: {len(questions)} of the {len(splits[SPLIT])} test problems have an image")
    return data


def _scienceqa_score(question: Question, prediction: str) -> tuple[float, str | None]:
    letter = scienceqa_choice(prediction, question.reference["num_choices"])
    return float(letter == question.reference["answer"]), letter


def score_scienceqa(data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None) -> BenchmarkScore:
    return score_each(data, predictions, _scienceqa_score, ("subject", "context", "grade"))
