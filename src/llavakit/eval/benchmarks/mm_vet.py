"""MM-Vet: `mm-vet.json` (id -> imagename, question, answer, capability list), judged by an LLM.

`--data` the file (or the folder holding it), images in `images/` beside it. Questions are asked as
written. The judge compares the model's answer with the ground truth, where "<AND>" joins parts
that must all be present and "<OR>" joins alternatives, and gives a correctness from 0.0 to 1.0,
as MM-Vet's protocol does. Scores: the mean correctness over all samples, per capability (each
sample counts for every capability it needs: rec, ocr, know, gen, spat, math) and per
capability combination. LLaVA numbers MM-Vet answers 0, 1, ... for `v1_0`, `v1_1`, ...: such
answers files match through the questions' aliases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from llavakit.errors import ConfigError, DataError
from llavakit.eval.benchmarks.base import BenchmarkData, BenchmarkScore, Metrics, Question
from llavakit.eval.benchmarks.files import expect, image_folder, read_json, require, single_path
from llavakit.eval.benchmarks.scoring import coverage_notes, mean, record, scorable
from llavakit.eval.judge import Judge, Messages, run_judge

_NUMBER = re.compile(r"\d+(?:\.\d+)?")

JUDGE_TASK = (
    "You grade answers to questions about images against a ground-truth answer. Give a correctness score "
    "from 0.0 (wrong) to 1.0 (right) in steps of 0.1, with partial credit for an answer that is partly right. "
    'In a ground truth, "<AND>" joins parts that must all be in the answer, and "<OR>" joins alternatives of '
    "which any one is enough. Reply with the score alone.\n\n"
    "Examples:\n"
    "Question: How many apples are on the plate? | Ground truth: 3 | Answer: I count three apples. | Score: 1.0\n"
    "Question: What colours is the flag? | Ground truth: red <AND> white | Answer: It is red. | Score: 0.5\n"
    "Question: Which city is this? | Ground truth: Rome <OR> Roma | Answer: This is Madrid. | Score: 0.0\n"
    'Question: What does the sign say? | Ground truth: STOP | Answer: The sign reads "stop". | Score: 1.0\n\n'
)


def _file(paths: Sequence[Path]) -> Path:
    path = single_path(paths, "mm_vet", "mm-vet.json or its folder")
    return path / "mm-vet.json" if path.is_dir() else path


def load_mm_vet(paths: Sequence[Path], images: Path | None) -> BenchmarkData:
    path = _file(paths)
    content = expect(read_json(path, "MM-Vet file"), dict, f"MM-Vet file {path}", "an object by sample id")
    folder = image_folder(images, path.parent, ["images"])
    questions = []
    for key, item in content.items():
        where = f"MM-Vet file {path} sample {key!r}"
        require(expect(item, dict, where, "an object"), ("imagename", "question", "answer"), where)
        capabilities = item.get("capability") or []
        if not isinstance(capabilities, list):
            raise DataError(f"{where}: 'capability' must be a list")
        reference = {"answer": str(item["answer"]), "question": str(item["question"]), "capabilities": capabilities}
        groups = {"capabilities": ",".join(str(c) for c in capabilities)} if capabilities else {}
        aliases = (key.rsplit("_", 1)[-1],) if "_" in key else ()
        image = folder / str(item["imagename"])
        questions.append(Question(key, key, str(item["question"]), image, reference, groups, aliases))
    return BenchmarkData("mm_vet", questions, [path], folder)


def judge_messages(question: Question, answer: str) -> Messages:
    """The judge's request: the grading task, the examples, then the sample to grade."""
    reference = question.reference
    row = f"Question: {reference['question']} | Ground truth: {reference['answer']} | Answer: {answer} | Score:"
    return [{"role": "user", "content": JUDGE_TASK + row}]


def parse_correctness(reply: str) -> float:
    """The first number of the reply, which must lie in [0, 1]."""
    found = _NUMBER.search(reply)
    value = float(found.group()) if found else None
    if value is None or not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a correctness from 0.0 to 1.0, got {reply.strip()[:80]!r}")
    return value


def _mean_score(records: Sequence[Mapping]) -> Metrics:
    return {"score": mean([item["score"] for item in records]), "n": float(len(records))}


def _by_capability(records: Sequence[Mapping]) -> dict[str, Metrics]:
    buckets: dict[str, list[Mapping]] = {}
    for item in records:
        for capability in item["capability_list"]:
            buckets.setdefault(str(capability), []).append(item)
    return {name: _mean_score(items) for name, items in sorted(buckets.items())}


def score_mm_vet(data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None) -> BenchmarkScore:
    if judge is None:
        raise ConfigError("mm_vet is scored by an LLM judge: give one (--judge-model, --judge-base-url)")
    questions = scorable(data, predictions)
    run = run_judge(judge, [(q.id, judge_messages(q, predictions[q.id])) for q in questions], parse_correctness)
    records = []
    for question in questions:
        judgement = run.judgements[question.id]
        if judgement.error is None:
            capabilities = question.reference["capabilities"]
            records.append(
                record(
                    question, predictions[question.id], judgement.value, judgement.reply, capability_list=capabilities
                )
            )
    notes = coverage_notes(data, predictions) + [f"judge failed on {qid}: {why}" for qid, why in run.failures.items()]
    groups = {}
    if records:
        groups["capability"] = _by_capability(records)
        combos: dict[str, list[Mapping]] = {}
        for item in records:
            combos.setdefault(item.get("capabilities", ""), []).append(item)
        groups["capabilities"] = {name: _mean_score(items) for name, items in sorted(combos.items()) if name}
    return BenchmarkScore(_mean_score(records) if records else {}, groups, records, notes, run.summary(judge))
