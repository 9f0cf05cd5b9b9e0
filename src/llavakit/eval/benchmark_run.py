"""Benchmarks end to end: published files in, greedy answers (resumable), official scores, tables and files out.

    llavakit eval runs/llava-7b --task pope --data data/pope/coco --image-folder data/coco/val2014 --output runs/eval
    llavakit eval score --task pope --data data/pope/coco --predictions answers.jsonl --output runs/eval

Generation is the batched, left-padded greedy runner of `llavakit.eval.runner` with the
checkpoint's own processor and conversation template. With `--output DIR` the answers go to
`DIR/<task>_answers.jsonl` in LLaVA's format, appended batch by batch; a rerun keeps every
answer already there and asks only the rest (`DIR/<task>_run.json` records the checkpoint, data
and settings, and a rerun that changes them is refused: `--overwrite` removes this task's files
and starts again). Then the scores: `DIR/<task>_results.json` (metrics, groups, counts, notes,
judge usage), `<task>_results.md`, `<task>_scored.jsonl` (each answer with what was parsed and
its score) and, for VQAv2 / VizWiz, `<task>_submission.json` for the evaluation server.

Images are checked before the model loads: missing files are counted and reported, and stop the
run unless `--skip-bad-images` (then they are left out and listed in the notes).

Several processes (`torchrun` / `accelerate launch`) share the questions: see `llavakit.eval.parallel`.
Each writes its answers to its own shard file, `DIR/<task>_answers.rank<r>.jsonl`, which rank 0 merges
into `<task>_answers.jsonl` once all are done; a rerun merges the shards an interrupted run left.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from llavakit.errors import ConfigError, DataError
from llavakit.eval.answers import answer_record, append_answers
from llavakit.eval.benchmark_report import BenchmarkResult, benchmark_markdown, benchmark_table
from llavakit.eval.benchmarks import score_benchmark
from llavakit.eval.benchmarks.base import Benchmark, BenchmarkData, EncodedImage, Question
from llavakit.eval.judge import Judge, judge_usage_line
from llavakit.eval.runner import check_settings, generate_answers, question_prompt
from llavakit.output_paths import check_writable_dir
from llavakit.processing.images import load_image

# The run settings a resumed run must share with the answers already written.
RESUME_KEYS = ("task", "checkpoint", "data", "image_folder", "max_new_tokens")


@dataclass(frozen=True)
class OutputFiles:
    """The files of one task in an output folder (several tasks can share the folder)."""

    folder: Path
    task: str

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.task}_{suffix}"

    @property
    def answers(self) -> Path:
        return self.path("answers.jsonl")

    @property
    def run(self) -> Path:
        return self.path("run.json")

    def shard(self, rank: int) -> Path:
        """Where process `rank` of a data-parallel run appends its answers until rank 0 merges them."""
        return self.path(f"answers.rank{rank}.jsonl")

    def shards(self) -> list[Path]:
        """The shard files in the folder (left by a running or an interrupted data-parallel run)."""
        return sorted(self.folder.glob(f"{self.task}_answers.rank*.jsonl"))

    def all(self) -> list[Path]:
        names = ("answers.jsonl", "run.json", "results.json", "results.md", "scored.jsonl", "submission.json")
        return [self.path(name) for name in names] + self.shards()


@dataclass
class AnswerRun:
    """Answers of one run: every asked question answered so far (earlier runs' answers included)."""

    predictions: dict[str, str] = field(default_factory=dict)
    kept: int = 0
    generated: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ---- images -------------------------------------------------------------------------------------


def missing_images(questions: Sequence[Question]) -> list[Question]:
    """The questions whose image file does not exist (embedded images are checked when decoded)."""
    return [q for q in questions if isinstance(q.image, Path) and not q.image.is_file()]


def check_images(data: BenchmarkData, questions: Sequence[Question], skip: bool) -> list[tuple[str, str]]:
    """Missing image files, counted: an error naming the first few (unless `skip`), else the skips."""
    missing = missing_images(questions)
    if missing and not skip:
        shown = ", ".join(str(q.image) for q in missing[:3]) + (" ..." if len(missing) > 3 else "")
        folder = f" (image folder {data.image_folder})" if data.image_folder is not None else ""
        raise DataError(
            f"{data.task}: {len(missing)} of {len(questions)} images are missing{folder}: {shown}; "
            "check --image-folder, or pass --skip-bad-images to evaluate the rest"
        )
    return [(q.id, f"image file {q.image} does not exist") for q in missing]


def _load(question: Question) -> Any:
    image = question.image
    if isinstance(image, EncodedImage):
        return load_image(image.decode(), name=image.where)
    return load_image(image)


# ---- generation ---------------------------------------------------------------------------------


def _prompt(processor: Any, question: Question) -> str:
    return question_prompt(processor, {"prompt": question.prompt, "image": "" if question.image is not None else None})


def _batch_images(batch: Sequence[Question], skip: bool, run: AnswerRun) -> tuple[list[Question], list[list[Any]]]:
    """The batch's decodable questions and their images; an undecodable image raises unless `skip`."""
    kept, images = [], []
    for question in batch:
        try:
            images.append([_load(question)] if question.image is not None else [])
        except ValueError as error:
            if not skip:
                raise DataError(f"question {question.id!r}: {error}") from error
            run.skipped.append((question.id, str(error)))
            continue
        kept.append(question)
    return kept, images


def _generate(
    model: Any, processor: Any, batch: Sequence[Question], images: Sequence[Sequence[Any]], max_new_tokens: int
) -> list[str]:
    """One batch's greedy answers through the left-padded runner, in the checkpoint's template."""
    return generate_answers(model, processor, [_prompt(processor, q) for q in batch], images, max_new_tokens)


@torch.inference_mode()
def answer_questions(
    model: Any,
    processor: Any,
    questions: Sequence[Question],
    answers_path: Path | None = None,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    model_id: str = "llavakit",
    metadata: Mapping[str, Any] | None = None,
    earlier: Mapping[str, str] | None = None,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> AnswerRun:
    """Greedy answers to the questions not in `earlier`, appended to `answers_path` batch by batch.

    `earlier` (answers by question id from an earlier run) are kept as they are. Questions whose
    image is missing or undecodable raise, or with `skip_bad_images` are listed in `skipped`.
    The model is in eval mode for the run and back in its previous mode after.
    """
    check_settings(batch_size, max_new_tokens)
    earlier = earlier or {}
    run = AnswerRun({q.id: earlier[q.id] for q in questions if q.id in earlier})
    run.kept = len(run.predictions)
    todo = [q for q in questions if q.id not in earlier]
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(todo), desc="answers", unit="question", disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                batch, images = _batch_images(chunk, skip_bad_images, run)
                texts = _generate(model, processor, batch, images, max_new_tokens) if batch else []
                if answers_path is not None and texts:
                    records = [answer_record(q, text, model_id, metadata or {}) for q, text in zip(batch, texts)]
                    append_answers(answers_path, records)
                run.predictions.update((q.id, text) for q, text in zip(batch, texts))
                run.generated += len(batch)
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return run


# ---- output folder and resume -------------------------------------------------------------------


def run_settings(benchmark: Benchmark, model_path: str, data: BenchmarkData, max_new_tokens: int) -> dict[str, Any]:
    """What a resumed run must share with the earlier one."""
    return {
        "task": benchmark.name,
        "checkpoint": str(Path(model_path).resolve()),
        "data": [str(path.resolve()) for path in data.sources],
        "image_folder": str(data.image_folder.resolve()) if data.image_folder is not None else None,
        "max_new_tokens": max_new_tokens,
    }


def check_resume(files: OutputFiles, settings: Mapping[str, Any]) -> None:
    """An earlier run of this task in the folder must have used the same settings."""
    if not files.run.is_file():
        for answers in [files.answers, *files.shards()]:
            if answers.exists():
                raise ConfigError(f"{answers} exists without {files.run.name}; pass --overwrite to start again")
        return
    try:
        earlier = json.loads(files.run.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{files.run}: not readable ({error}); pass --overwrite to start again") from error
    changed = [key for key in RESUME_KEYS if earlier.get(key) != settings.get(key)]
    if changed:
        details = "; ".join(f"{key}: {earlier.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
        raise ConfigError(
            f"{files.answers} holds answers of a run with other settings ({details}); "
            "pass --overwrite to replace them, or choose another --output"
        )


def prepare_output(output: str | Path, task: str, overwrite: bool) -> OutputFiles:
    """The task's files in `output` (checked writable); `overwrite` removes this task's earlier files."""
    folder = check_writable_dir(output)
    files = OutputFiles(folder, task)
    if overwrite:
        for path in files.all():
            path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    return files


# ---- scoring and writing ------------------------------------------------------------------------


def score_result(
    benchmark: Benchmark,
    data: BenchmarkData,
    predictions: Mapping[str, str],
    source: str,
    judge: Judge | None,
    counts: Mapping[str, int],
) -> BenchmarkResult:
    """Score the answers and gather what a report shows."""
    score = score_benchmark(benchmark.name, data, predictions, judge)
    return BenchmarkResult(benchmark, score, source, {"questions": len(data.questions), **counts})


def write_result(
    result: BenchmarkResult, data: BenchmarkData, predictions: Mapping[str, str], files: OutputFiles
) -> None:
    """Results JSON and markdown, the scored answers, and the server's submission file where there is one."""
    result.files = {"results": str(files.path("results.json")), "scored": str(files.path("scored.jsonl"))}
    if files.answers.exists():
        result.files["answers"] = str(files.answers)
    submission = result.benchmark.submission
    if submission is not None:
        result.files["submission"] = str(files.path("submission.json"))
        files.path("submission.json").write_text(json.dumps(submission(data, predictions)) + "\n", encoding="utf-8")
    with open(files.path("scored.jsonl"), "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in result.score.records)
    text = json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n"
    files.path("results.json").write_text(text, encoding="utf-8")
    files.path("results.md").write_text(benchmark_markdown(result), encoding="utf-8")


def report(result: BenchmarkResult, judge: Judge | None) -> None:
    """The table, the judge's usage line and where the files are, on the terminal."""
    from rich.console import Console

    console = Console()
    console.print(benchmark_table(result))
    if judge is not None and result.score.judge is not None:
        print(judge_usage_line(result.score.judge))
    for name, path in result.files.items():
        print(f"{name}: {path}")
