"""POPE: the folder of COCO annotation files `coco_pope_{random,popular,adversarial}.json`.

Each file holds one JSON object a line: `question_id` (numbered from 1 in every file), `image`
(a COCO val2014 file name), `text` (the question) and `label` ("yes" / "no"). Question ids are
therefore `<split>-<question_id>` here. The prompt is the question and the short-answer line,
as LLaVA-1.5 asks it. A reply becomes yes / no by LLaVA's `eval_pope.py` rule
(`llavakit.eval.pope.pope_answer`); accuracy, precision, recall, F1 and the yes-ratio are
reported per split, and the overall row is their mean over the splits (a split counts the same
however many of its questions were answered).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from llavakit.errors import DataError
from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Metrics, Question
from llavakit.eval.benchmarks.files import expect, image_folder, read_json_lines, require
from llavakit.eval.benchmarks.prompts import short_answer
from llavakit.eval.benchmarks.scoring import coverage_notes, group_values, record, scorable
from llavakit.eval.judge import Judge
from llavakit.eval.pope import pope_answer, pope_metrics

SPLITS = ("random", "popular", "adversarial")
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def pope_files(paths: Sequence[Path]) -> list[Path]:
    """The annotation files: the `*pope_*.json` files of a folder, or the files given."""
    if len(paths) == 1 and paths[0].is_dir():
        files = sorted(paths[0].glob("*pope_*.json"), key=_split_order)
        if not files:
            raise DataError(f"POPE folder {paths[0]} holds no coco_pope_<split>.json files")
        return files
    return list(paths)


def _split_order(path: Path) -> tuple[int, str]:
    """random, popular, adversarial first (POPE's order), then any other split by name."""
    split = split_name(path)
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), path.name)


def split_name(path: Path) -> str:
    """`coco_pope_adversarial.json` -> `adversarial`."""
    return path.stem.rsplit("pope_", 1)[-1]


def _questions(path: Path, folder: Path) -> list[Question]:
    split = split_name(path)
    questions = []
    for number, item in read_json_lines(path, "POPE file"):
        where = f"POPE file {path}: line {number}"
        require(item, ("question_id", "image", "text", "label"), where)
        label = str(item["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise DataError(f"{where}: 'label' must be yes or no, got {item['label']!r}")
        qid = f"{split}-{item['question_id']}"
        image = expect(item["image"], str, where, "an image file name")
        prompt = short_answer(expect(item["text"], str, where, "the question text"))
        questions.append(Question(qid, qid, prompt, folder / image, {"label": label}, {"split": split}))
    return questions


def load_pope(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    files = pope_files(paths)
    folder = image_folder(images, files[0].parent, ["val2014"])
    questions = [question for path in files for question in _questions(path, folder)]
    if len({q.id for q in questions}) != len(questions):
        raise DataError("POPE: two files of the same split, or a question_id repeated within a file")
    return BenchmarkData("pope", questions, files, folder)


def _split_metrics(records: Sequence[Mapping]) -> Metrics:
    metrics = pope_metrics([item["prediction"] for item in records], [item["label"] for item in records])
    return {**metrics, "n": float(len(records))}


def score_pope(data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None) -> BenchmarkScore:
    records = []
    for question in scorable(data, predictions):
        parsed = pope_answer(predictions[question.id])
        label = question.reference["label"]
        records.append(record(question, predictions[question.id], float(parsed == label), parsed, label=label))
    splits = {split: _split_metrics(members) for split, members in group_values(records, "split").items()}
    metrics: Metrics = {}
    if splits:
        metrics = {name: sum(m[name] for m in splits.values()) / len(splits) for name in POPE_METRICS}
        metrics["n"] = float(len(records))
    return BenchmarkScore(metrics, {"split": splits} if splits else {}, records, coverage_notes(data, predictions))
