"""MME: the release folder (`MME_Benchmark_release_version`), acc and acc+ per subtask, perception and cognition.

Each subtask folder holds its images and, per image, a `<image stem>.txt` of two lines
"question<TAB>Yes|No": beside the images, or in `questions_answers_YN/` with the images in
`images/`. Also read: a folder of `<subtask>.txt` files of "image<TAB>question<TAB>answer" lines
(the evaluation tool's results template), with `--image-folder` the release folder.
Prompt: the question (it already asks for yes or no) and the short-answer line. A reply is read
as the official `calculation.py` reads it (lower case; "yes" / "no", else the first four
characters decide, else "other", which is wrong). Per subtask: acc (questions right), acc+
(images with both questions right), score = 100 * acc + 100 * acc+; perception and cognition
are the sums of their subtasks' scores (out of 2000 and 800 when all subtasks are present).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from llavakit.errors import DataError
from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Metrics, Question, text_alias
from llavakit.eval.benchmarks.files import read_text, single_path
from llavakit.eval.benchmarks.prompts import short_answer
from llavakit.eval.benchmarks.scoring import coverage_notes, group_values, mean, record, scorable
from llavakit.eval.judge import Judge

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
QA_FOLDER = "questions_answers_YN"


def mme_answer(reply: str) -> str:
    """ "yes", "no" or "other", as MME's `calculation.py` reads a reply."""
    text = reply.lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    return "no" if "no" in text[:4] else "other"


def _label(answer: str, where: str) -> str:
    label = answer.strip().lower()
    if label not in ("yes", "no"):
        raise DataError(f"{where}: the answer must be Yes or No, got {answer.strip()!r}")
    return label


def _release_root(folder: Path) -> Path:
    """The folder holding the subtask folders: `folder`, or its one subfolder that does (MME_Benchmark/)."""
    if any((folder / name).is_dir() for name in SUBTASKS):
        return folder
    inner = [child for child in folder.iterdir() if child.is_dir() and any((child / n).is_dir() for n in SUBTASKS)]
    if len(inner) == 1:
        return inner[0]
    raise DataError(f"MME folder {folder} holds none of the subtask folders ({', '.join(SUBTASKS[:3])}, ...)")


def _question(subtask: str, image: Path, root: Path, question: str, label: str, turn: int) -> Question:
    key = f"{subtask}/{image.name}"
    aliases = (text_alias(key, question), text_alias(image.relative_to(root).as_posix(), question))
    qid = f"{key}#{turn}"
    reference = {"answer": label, "image": key}
    return Question(qid, qid, short_answer(question), image, reference, {"subtask": subtask}, aliases)


def _images_by_stem(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix in IMAGE_SUFFIXES}


def _subtask_questions(root: Path, subtask: str) -> list[Question]:
    folder = root / subtask
    split = (folder / "images").is_dir() and (folder / QA_FOLDER).is_dir()
    texts, images = (folder / QA_FOLDER, folder / "images") if split else (folder, folder)
    by_stem = _images_by_stem(images)
    questions = []
    for text_file in sorted(texts.glob("*.txt")):
        if text_file.stem not in by_stem:
            raise DataError(f"MME file {text_file}: no image {text_file.stem}.jpg/.png in {images}")
        lines = [line for line in read_text(text_file, "MME file").splitlines() if line.strip()]
        for turn, line in enumerate(lines, start=1):
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(f"MME file {text_file} line {turn}: expected 'question<TAB>Yes|No'")
            label = _label(parts[1], f"MME file {text_file} line {turn}")
            questions.append(_question(subtask, by_stem[text_file.stem], root, parts[0].strip(), label, turn))
    return questions


def _template_questions(folder: Path, images: Path | None) -> list[Question]:
    """Questions from `<subtask>.txt` files of image<TAB>question<TAB>answer lines; images in the release folder."""
    if images is None:
        raise DataError(f"MME: {folder} holds <subtask>.txt files; give --image-folder, the release folder")
    root = _release_root(images)
    questions = []
    for subtask in SUBTASKS:
        path = folder / f"{subtask}.txt"
        if not path.is_file():
            continue
        turns: dict[str, int] = {}
        for number, line in enumerate(read_text(path, "MME file").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise DataError(f"MME file {path} line {number}: expected 'image<TAB>question<TAB>answer'")
            name, question, answer = parts[0].strip(), parts[1].strip(), parts[2]
            image = next((p for p in (root / subtask / "images" / name, root / subtask / name) if p.exists()), None)
            image = image or root / subtask / name
            turns[name] = turns.get(name, 0) + 1
            label = _label(answer, f"MME file {path} line {number}")
            questions.append(_question(subtask, image, root, question, label, turns[name]))
    return questions


def load_mme(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    folder = single_path(paths, "mme", "the MME release folder")
    if not folder.is_dir():
        raise DataError(f"MME: --data {folder} is not a folder; give MME_Benchmark_release_version")
    if any((folder / f"{name}.txt").is_file() for name in SUBTASKS):
        questions = _template_questions(folder, images)
        root = _release_root(images) if images is not None else folder
    else:
        root = _release_root(folder)
        questions = [q for subtask in SUBTASKS if (root / subtask).is_dir() for q in _subtask_questions(root, subtask)]
    if not questions:
        raise DataError(f"MME: no questions found in {folder}")
    data = BenchmarkData("mme", questions, [folder], root)
    data.extras["per_image"] = _questions_per_image(questions)  # of the whole benchmark, whatever --limit keeps
    present = {q.groups["subtask"] for q in questions}
    missing = [name for name in SUBTASKS if name not in present]
    if missing:
        data.notes.append(f"subtasks not in the data (their scores count 0 in the totals): {', '.join(missing)}")
    return data


def _questions_per_image(questions: Sequence[Question]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for question in questions:
        counts[question.reference["image"]] = counts.get(question.reference["image"], 0) + 1
    return counts


def _subtask_metrics(records: Sequence[Mapping], sizes: Mapping[str, int]) -> Metrics:
    """acc, acc+ over the images whose questions were all answered, and their MME score."""
    by_image = group_values(records, "image")
    complete = [members for key, members in by_image.items() if len(members) == sizes[key]]
    acc = mean([item["score"] for item in records])
    acc_plus = mean([float(all(item["score"] == 1.0 for item in members)) for members in complete])
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * acc + 100 * acc_plus, "n": float(len(records))}


def score_mme(data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None) -> BenchmarkScore:
    records = []
    for question in scorable(data, predictions):
        parsed = mme_answer(predictions[question.id])
        answer, image = question.reference["answer"], question.reference["image"]
        records.append(record(question, predictions[question.id], float(parsed == answer), parsed, image=image))
    notes = coverage_notes(data, predictions)
    if not records:
        return BenchmarkScore({}, {}, records, notes)
    sizes = data.extras.get("per_image") or _questions_per_image(data.questions)
    subtasks = {name: _subtask_metrics(members, sizes) for name, members in group_values(records, "subtask").items()}
    metrics = {
        "perception": sum(subtasks[name]["score"] for name in PERCEPTION if name in subtasks),
        "cognition": sum(subtasks[name]["score"] for name in COGNITION if name in subtasks),
        "accuracy": mean([item["score"] for item in records]),
        "n": float(len(records)),
    }
    ordered = {name: subtasks[name] for name in SUBTASKS if name in subtasks}
    return BenchmarkScore(metrics, {"subtask": ordered}, records, notes)
