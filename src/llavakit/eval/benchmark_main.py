"""The two benchmark forms of `llavakit eval`: run a checkpoint on a benchmark, or score an answers file.

    llavakit eval CKPT --task NAME --data PATH... [--image-folder DIR] [--limit N] [--output DIR]
    llavakit eval score --task NAME --data PATH... --predictions ANSWERS.jsonl [--output DIR]

Everything that can be checked is checked before the model loads: the task, every data file,
the images (missing ones counted), the judge for judged tasks, the output folder and, when it
holds an earlier run of the task, that the settings match (see `benchmark_run`). Launched as several
processes (`torchrun`, `accelerate launch`), a run shares the questions among them (see `parallel`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llavakit.errors import ConfigError
from llavakit.eval.answers import read_answers
from llavakit.eval.benchmark_run import (
    AnswerRun,
    OutputFiles,
    check_images,
    check_resume,
    prepare_output,
    report,
    run_settings,
    score_result,
    write_result,
)
from llavakit.eval.benchmarks import get_benchmark, load_benchmark
from llavakit.eval.benchmarks.base import Benchmark, BenchmarkData
from llavakit.eval.judge import Judge
from llavakit.eval.parallel import answer_shared, check_parallel_placement, joined_ranks, merge_shards, rank_device
from llavakit.eval.runner import check_settings
from llavakit.output_paths import check_writable_dir


def check_judge(benchmark: Benchmark, judge: Judge | None) -> None:
    """A judged benchmark needs a judge; the others take none."""
    if benchmark.judged and judge is None:
        raise ConfigError(
            f"{benchmark.name} is scored by an LLM judge: give --judge-model NAME (and --judge-base-url URL for a "
            "server other than OpenAI's)"
        )
    if judge is not None and not benchmark.judged:
        raise ConfigError(f"--judge-*: {benchmark.name} is scored without a judge (judged tasks: llava_bench, mm_vet)")


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")


def _skip_notes(run: AnswerRun) -> list[str]:
    if not run.skipped:
        return []
    shown = "; ".join(f"{qid}: {why}" for qid, why in run.skipped[:3]) + (" ..." if len(run.skipped) > 3 else "")
    return [f"{len(run.skipped)} questions skipped for bad images ({shown})"]


def _earlier(files: OutputFiles | None, data: BenchmarkData) -> dict[str, str]:
    """The answers an earlier run left (its shard files merged first), by question id; rank 0 reads them."""
    if files is None:
        return {}
    merge_shards(files, data.questions)
    if not files.answers.exists():
        return {}
    return read_answers(files.answers, data, own=True).predictions


def _start_output(files: OutputFiles | None, settings: Mapping[str, Any], overwrite: bool) -> None:
    """The output folder made ready and the run's settings recorded; rank 0 does it once."""
    if files is None:
        print("no --output: the answers are not kept (give --output DIR to keep them and to resume)")
        return
    prepare_output(files.folder, files.task, overwrite)
    files.run.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _whole_run(
    data: BenchmarkData, earlier: Mapping[str, str], skipped: list[tuple[str, str]], generated: AnswerRun
) -> AnswerRun:
    """The earlier run's answers and this run's, in question order, with every skip counted."""
    predictions = {**earlier, **generated.predictions}
    return AnswerRun(
        {q.id: predictions[q.id] for q in data.questions if q.id in predictions},
        kept=len(earlier),
        generated=generated.generated,
        skipped=[*skipped, *generated.skipped],
    )


def _finish(
    benchmark: Benchmark,
    data: BenchmarkData,
    run: AnswerRun,
    model_path: str,
    judge: Judge | None,
    files: OutputFiles | None,
) -> int:
    """Score the answers once, then write and print the results."""
    counts = {
        "answered": len(run.predictions),
        "kept": run.kept,
        "generated": run.generated,
        "skipped": len(run.skipped),
    }
    result = score_result(benchmark, data, run.predictions, f"checkpoint {model_path}", judge, counts)
    result.score.notes = [*data.notes, *_skip_notes(run), *result.score.notes]
    if run.kept:
        result.score.notes.append(f"{run.kept} answers kept from an earlier run, {run.generated} generated")
    if files is not None:
        write_result(result, data, run.predictions, files)
    report(result, judge)
    return 0


def _load_model(
    model_path: str, device: str | None, dtype: str | None, device_map: str | None, quantization: str | None
) -> tuple[Any, Any]:
    """The checkpoint's model and processor, loaded as chat loads them (this process's device)."""
    from llavakit.model.checkpoint import inference_dtype, load_checkpoint
    from llavakit.processing.processor import LlavaKitProcessor

    dtype = inference_dtype(dtype, device, device_map, quantization)
    return load_checkpoint(
        model_path, LlavaKitProcessor, device, dtype, device_map=device_map, quantization=quantization
    )


def benchmark_main(
    model_path: str,
    task: str,
    data: Sequence[str],
    *,
    image_folder: str | None = None,
    output: str | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    skip_bad_images: bool = False,
    judge: Judge | None = None,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
    quantization: str | None = None,
) -> int:
    """`llavakit eval CKPT --task NAME --data ...`: answer, score, print and write; returns 0.

    Under `torchrun` / `accelerate launch` the processes share the questions and rank 0 alone
    merges, scores, writes and prints (`llavakit.eval.parallel`); the checks run in every process,
    so bad input stops all of them alike.
    """
    from llavakit.model.checkpoint import check_checkpoint_folder, check_placement

    benchmark = get_benchmark(task)
    tokens = max_new_tokens if max_new_tokens is not None else benchmark.max_new_tokens
    check_settings(batch_size, tokens)
    check_limit(limit)
    check_judge(benchmark, judge)
    dataset = load_benchmark(task, data, image_folder).limited(limit)
    settings = run_settings(benchmark, model_path, dataset, tokens)
    files = OutputFiles(check_writable_dir(output), task) if output is not None else None
    if files is not None and not overwrite:
        check_resume(files, settings)
    with joined_ranks() as ranks:
        check_parallel_placement(device_map, ranks)
        earlier = {} if overwrite else ranks.on_main(lambda: _earlier(files, dataset))
        todo = [q for q in dataset.questions if q.id not in earlier]
        skipped = check_images(dataset, todo, skip_bad_images)
        check_placement(device, device_map, quantization)
        check_checkpoint_folder(model_path)
        ranks.on_main(lambda: _start_output(files, settings, overwrite))
        place = rank_device(device, quantization, ranks)
        model, processor = _load_model(model_path, place, dtype, device_map, quantization)
        bad = {qid for qid, _ in skipped}
        generated = answer_shared(
            ranks,
            model,
            processor,
            [q for q in todo if q.id not in bad],
            files,
            batch_size=batch_size,
            max_new_tokens=tokens,
            model_id=Path(model_path).name,
            metadata={"task": task},
            skip_bad_images=skip_bad_images,
        )
        del model
    if not ranks.is_main:
        return 0
    return _finish(benchmark, dataset, _whole_run(dataset, earlier, skipped, generated), model_path, judge, files)


def score_main(
    task: str,
    data: Sequence[str],
    predictions: str,
    *,
    image_folder: str | None = None,
    output: str | None = None,
    limit: int | None = None,
    judge: Judge | None = None,
) -> int:
    """`llavakit eval score --task NAME --data ... --predictions FILE`: score an answers file; returns 0."""
    benchmark = get_benchmark(task)
    check_limit(limit)
    check_judge(benchmark, judge)
    dataset = load_benchmark(task, data, image_folder).limited(limit)
    answers = read_answers(Path(predictions), dataset)
    files = prepare_output(output, task, overwrite=False) if output is not None else None
    counts = {"answered": len(answers.predictions), "unknown_answers": len(answers.unknown)}
    result = score_result(benchmark, dataset, answers.predictions, f"answers {predictions}", judge, counts)
    result.score.notes = [*dataset.notes, *result.score.notes]
    if answers.unknown:
        shown = ", ".join(answers.unknown[:3]) + (" ..." if len(answers.unknown) > 3 else "")
        result.score.notes.append(f"{len(answers.unknown)} answers match no question of the data ({shown})")
    if files is not None:
        write_result(result, dataset, answers.predictions, files)
    report(result, judge)
    return 0
