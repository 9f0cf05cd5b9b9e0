"""LLaVA-Bench (In-the-Wild and COCO), judged by an LLM.

In-the-Wild: `--data` the folder holding `questions.jsonl` (question_id, image, text, category),
`context.jsonl` (image, caption) and `answers_gpt4.jsonl` (the reference answers), images in
`images/`. COCO: the folder holding `qa90_questions.jsonl`, `qa90_gpt4_answer.jsonl` and
`caps_boxes_coco2014_val_80.jsonl` (five captions and the object boxes per image), with
`--image-folder` the COCO val2014 images. Questions are asked as written. The judge sees the
image description, the question, the reference answer (Assistant 1) and the model's answer
(Assistant 2) and scores each from 1 to 10, as LLaVA's protocol does; the relative score is the
model's total over the reference's, overall and per category (conv, detail, complex).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llavakit.errors import ConfigError, DataError
from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Metrics, Question
from llavakit.eval.benchmarks.files import expect, image_folder, read_json_lines, require
from llavakit.eval.benchmarks.scoring import coverage_notes, group_values, mean, record, scorable
from llavakit.eval.judge import Judge, Messages, run_judge

WILD_FILES = ("questions.jsonl", "context.jsonl", "answers_gpt4.jsonl")
COCO_FILES = ("qa90_questions.jsonl", "caps_boxes_coco2014_val_80.jsonl", "qa90_gpt4_answer.jsonl")
COCO_PREFIX = "COCO_val2014_"

JUDGE_SYSTEM = "You are a careful and impartial judge of answers that AI assistants give about images."
JUDGE_TASK = (
    "Rate how helpful, relevant, accurate and detailed each assistant's answer is, on a scale from 1 (worst) "
    "to 10 (best), holding both to the same standard; the order in which the answers appear must not "
    "influence the rating.\n"
    "Reply with the two scores on the first line, Assistant 1's and then Assistant 2's, separated by a "
    'space (for example "6 8"), and explain the rating from the second line on.'
)


def _files(paths: Sequence[Path]) -> tuple[Path, Path, Path]:
    """(questions, contexts, reference answers): a folder of either layout, or the three files."""
    if len(paths) == 1 and paths[0].is_dir():
        for names in (WILD_FILES, COCO_FILES):
            if all((paths[0] / name).is_file() for name in names):
                return tuple(paths[0] / name for name in names)  # type: ignore[return-value]
        raise DataError(f"llava_bench: {paths[0]} holds neither {', '.join(WILD_FILES)} nor {', '.join(COCO_FILES)}")
    if len(paths) == 3:
        kinds = {_kind(path): path for path in paths}
        if set(kinds) == {"questions", "context", "answers"}:
            return kinds["questions"], kinds["context"], kinds["answers"]
    raise DataError(
        "llava_bench: --data takes the benchmark folder, or its questions, context and reference answers files"
    )


def _kind(path: Path) -> str:
    """What a LLaVA-Bench file holds, by the keys of its first record."""
    lines = read_json_lines(path, "LLaVA-Bench file")
    first = lines[0][1] if lines else {}
    if "caption" in first or "captions" in first:
        return "context"
    return "questions" if "image" in first else "answers"


def describe_image(context: Mapping[str, Any]) -> str:
    """The judge's view of the image: the caption(s), and the object boxes when the context has them."""
    captions = context.get("caption", context.get("captions", ""))
    text = "\n".join(captions) if isinstance(captions, list) else str(captions)
    boxes = [f"{item.get('category')}: {item.get('bbox')}" for item in context.get("instances") or []]
    return text + ("\n\n" + "\n".join(boxes) if boxes else "")


def _contexts(path: Path) -> dict[str, str]:
    contexts = {}
    for number, item in read_json_lines(path, "LLaVA-Bench context file"):
        require(item, ("image",), f"LLaVA-Bench context file {path} line {number}")
        contexts[str(item["image"])] = describe_image(item)
    return contexts


def _references(path: Path) -> dict[str, str]:
    references = {}
    for number, item in read_json_lines(path, "LLaVA-Bench answers file"):
        where = f"LLaVA-Bench answers file {path} line {number}"
        require(item, ("question_id", "text"), where)
        references[str(item["question_id"])] = expect(item["text"], str, where, "the reference answer text")
    return references


def _image(folder: Path, name: str) -> Path:
    """The image file; COCO's val2014 files carry the `COCO_val2014_` prefix the question files leave out."""
    coco = folder / f"{COCO_PREFIX}{name}"
    return coco if not (folder / name).exists() and coco.exists() else folder / name


def load_llava_bench(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    questions_path, context_path, answers_path = _files(paths)
    contexts, references = _contexts(context_path), _references(answers_path)
    folder = image_folder(images, questions_path.parent, ["images"])
    questions = []
    for number, item in read_json_lines(questions_path, "LLaVA-Bench questions file"):
        where = f"LLaVA-Bench questions file {questions_path} line {number}"
        require(item, ("question_id", "image", "text"), where)
        qid, image = str(item["question_id"]), str(item["image"])
        if image not in contexts:
            raise DataError(f"{where}: image {image!r} has no entry in {context_path}")
        if qid not in references:
            raise DataError(f"{where}: question {qid} has no reference answer in {answers_path}")
        category = str(item.get("category", "all"))
        text = expect(item["text"], str, where, "the question text")
        reference = {"answer": references[qid], "context": contexts[image], "question": text}
        questions.append(
            Question(qid, item["question_id"], text, _image(folder, image), reference, {"category": category})
        )
    return BenchmarkData("llava_bench", questions, [questions_path, context_path, answers_path], folder)


def judge_messages(question: Question, answer: str) -> Messages:
    """The judge's request for one question: description, question, reference (1) and model (2) answers, the task."""
    reference = question.reference
    content = (
        "A user looked at an image and asked an AI assistant the question below. You cannot see the image; the "
        "description tells you what it shows.\n\n"
        f"[Image description]\n{reference['context']}\n\n[Question]\n{reference['question']}\n\n"
        f"[Assistant 1]\n{reference['answer']}\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{answer}\n[End of Assistant 2]\n\n{JUDGE_TASK}"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]


def parse_scores(reply: str) -> tuple[float, float]:
    """The two 0-10 scores on the reply's first non-empty line (comma or space separated)."""
    lines = [line for line in reply.splitlines() if line.strip()]
    words = lines[0].replace(",", " ").split() if lines else []
    try:
        scores = [float(word) for word in words]
    except ValueError:
        scores = []
    if len(scores) != 2 or not all(0 <= score <= 10 for score in scores):
        raise ValueError(f"its first line should hold two scores from 1 to 10, got {(lines or [''])[0][:80]!r}")
    return scores[0], scores[1]


def _relative(records: Sequence[Mapping]) -> Metrics:
    model = mean([item["model_score"] for item in records])
    reference = mean([item["reference_score"] for item in records])
    relative = model / reference if reference else 0.0
    return {"relative": relative, "model_score": model, "reference_score": reference, "n": float(len(records))}


def score_llava_bench(
    data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None
) -> BenchmarkScore:
    if judge is None:
        raise ConfigError("llava_bench is scored by an LLM judge: give one (--judge-model, --judge-base-url)")
    questions = scorable(data, predictions)
    run = run_judge(judge, [(q.id, judge_messages(q, predictions[q.id])) for q in questions], parse_scores)
    records = []
    for question in questions:
        judgement = run.judgements[question.id]
        if judgement.error is None:
            reference_score, model_score = judgement.value
            records.append(
                record(
                    question,
                    predictions[question.id],
                    model_score / 10,
                    judgement.reply,
                    model_score=model_score,
                    reference_score=reference_score,
                )
            )
    notes = coverage_notes(data, predictions) + [f"judge failed on {qid}: {why}" for qid, why in run.failures.items()]
    groups = {"category": {value: _relative(items) for value, items in group_values(records, "category").items()}}
    metrics = _relative(records) if records else {}
    return BenchmarkScore(metrics, groups if records else {}, records, notes, run.summary(judge))
