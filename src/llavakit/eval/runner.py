"""Batched greedy evaluation: question files in, predictions (JSONL), metrics and tables out.

    llavakit eval runs/ckpt runs/world/eval_vqa.jsonl runs/world/eval_pope.jsonl --output runs/eval

or in process (the demo does this after training):

    from llavakit.eval.runner import evaluate_files
    results = evaluate_files(model, processor, ["runs/world/eval_vqa.jsonl"], output_dir="runs/eval")

Decoding follows LLaVA-1.5's evaluation: greedy (no sampling, one beam), KV cache, the
question (its `prompt`, with the response-format line, when the record has one) after
`<image>\\n` in one user turn of the model's conversation template. Prompts are batched
with LEFT padding, so every prompt ends in the last column and the new tokens of all rows
start together; the padding is built here from the unpadded ids, so the tokenizer (which
training and serving share) is never changed. Batched answers equal one-by-one answers
(tests/test_eval_runner.py).

Bad images: with `on_bad_image="error"` (the default) a missing or undecodable image
stops the run with a ValueError naming the question id and the file; missing files are
found before any generation starts. With `on_bad_image="skip"` the question is left out,
counted in `EvalResult.skipped` with its reason, and reported under the tables.

Output: the folder is checked before the first answer is generated (a file in the way fails
at once), and the files are written after the last one. `llavakit eval --output DIR` refuses
a DIR that already holds files unless `--overwrite`, which empties it just before writing (and
is refused for a folder that holds an input: the model, a question file, the images).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from llavakit.errors import ConfigError, DataError
from llavakit.eval.baselines import baselines
from llavakit.eval.metrics import get_task, grouped_metrics, task_metrics
from llavakit.eval.questions import (
    Question,
    QuestionSet,
    check_questions,
    load_question_set,
)
from llavakit.eval.report import result_table, results_markdown, results_table
from llavakit.eval.result import EvalResult
from llavakit.output_paths import check_output_dir, check_writable_dir, prepare_output_dir
from llavakit.processing.images import load_image

DEFAULT_GROUP_BY = ("category", "strategy")
BAD_IMAGE_POLICIES = ("error", "skip")
# LLaVA-1.5's model_vqa_loader default; short answers stop long before it.
DEFAULT_MAX_NEW_TOKENS = 128

__all__ = [
    "EvalResult",
    "evaluate",
    "evaluate_files",
    "evaluate_main",
    "generate_answers",
    "question_prompt",
    "result_table",
    "results_markdown",
    "results_table",
]


# ---- prompts and generation ------------------------------------------------------------------


def question_prompt(processor: Any, question: Mapping[str, Any]) -> str:
    """The full prompt text: the record's `prompt` (else `question`) as one user turn, `<image>` first.

    A text that already holds the image placeholder is left as it is; a question without
    an image gets none.
    """
    text = question.get("prompt") or question["question"]
    image_token = processor.image_token
    if question.get("image") is not None and image_token not in text:
        text = f"{image_token}\n{text}"
    return processor.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with each row right-aligned: pads and mask zeros on the left."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[index, width - len(row) :] = 1
    return input_ids, attention_mask


def _answer_text(text: str, stop: str | None) -> str:
    """A decoded answer up to the template's end-of-turn text (when it is not one token), stripped."""
    if stop and stop in text:
        text = text[: text.index(stop)]
    return text.strip()


@torch.inference_mode()
def generate_answers(
    model: Any,
    processor: Any,
    prompts: Sequence[str],
    images: Sequence[Sequence[Image.Image]],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy answers to a batch of prompts (`images[i]`: the images of prompt i, in placeholder order)."""
    tokenizer = processor.tokenizer
    groups = [list(group) for group in images]
    encoded = processor(text=list(prompts), images=groups, return_tensors=None, padding=False)
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    input_ids, attention_mask = _left_padded(encoded["input_ids"], pad_id)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key, value in encoded.items():  # pixel_values, and any layout tensors the processor adds
        if key not in ("input_ids", "attention_mask"):
            inputs[key] = torch.as_tensor(np.asarray(value))
    # floats (the pixels) in the model's dtype, so a bfloat16 or float16 model gets matching inputs
    inputs = {
        key: value.to(model.device, model.dtype) if value.is_floating_point() else value.to(model.device)
        for key, value in inputs.items()
    }
    output = model.generate(
        **inputs,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=processor.stop_token_ids or None,
        pad_token_id=pad_id,
        use_cache=True,
    )
    texts = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
    return [_answer_text(text, processor.template.stop_token) for text in texts]


# ---- one question set ------------------------------------------------------------------------


def check_settings(batch_size: int, max_new_tokens: int, on_bad_image: str = "error") -> None:
    """The run's settings, checked before any model loads or runs."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"batch size and max new tokens must be positive, got {batch_size} and {max_new_tokens}")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")


def _image_path(question: Mapping[str, Any], image_folder: Path | None) -> Path | None:
    image = question.get("image")
    if image is None:
        return None
    return image_folder / image if image_folder is not None else Path(image)


def _bad_image(question: Mapping[str, Any], error: Exception, on_bad_image: str, skipped: list[dict[str, str]]) -> None:
    """Raise (policy "error") or record the skip (policy "skip")."""
    if on_bad_image == "error":
        raise DataError(f"question {question['id']!r}: {error}") from error
    skipped.append({"id": str(question["id"]), "reason": str(error)})


def _record(question: Mapping[str, Any], prediction: str, task: str, group_by: Sequence[str]) -> dict[str, Any]:
    """One row of the predictions file."""
    scoring = get_task(task)
    score = float(scoring.score(prediction, question["answer"]))
    record = {
        "id": question["id"],
        "image": question.get("image"),
        "question": question.get("question") or question.get("prompt"),
        "prediction": prediction,
        "parsed": scoring.parse(prediction),
        "answer": question["answer"],
        "score": score,
        "correct": score >= 1.0,
    }
    record.update({name: question[name] for name in group_by if question.get(name) is not None})
    return record


def _grouping_fields(questions: Sequence[Mapping[str, Any]], group_by: Sequence[str]) -> list[str]:
    """The fields of `group_by` with at least two values (one value would repeat the overall row)."""
    return [name for name in group_by if len({str(q[name]) for q in questions if q.get(name) is not None}) > 1]


def _metrics(task: str, questions: Sequence[Question], records: Sequence[dict[str, Any]], group_by: Sequence[str]):
    """Overall and grouped metrics, each with the baselines of the same questions."""
    metrics = {
        **task_metrics(task, [r["prediction"] for r in records], [r["answer"] for r in records]),
        **baselines(questions),
    }
    fields = _grouping_fields(questions, group_by)
    groups = grouped_metrics(task, records, fields)
    for name, values in groups.items():
        for value, group_metrics in values.items():
            members = [q for q in questions if q.get(name) is not None and str(q[name]) == value]
            group_metrics.update(baselines(members))
    return metrics, groups


def write_predictions(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """The records as JSONL (one prediction a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return path


def evaluate(
    model: Any,
    processor: Any,
    questions: Sequence[Question],
    image_folder: str | Path | None = None,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    task: str = "exact",
    *,
    name: str = "eval",
    on_bad_image: str = "error",
    predictions_path: str | Path | None = None,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    progress: bool = True,
) -> EvalResult:
    """Answer `questions` greedily in batches and score them with `task` (see `llavakit.eval.metrics`).

    Image paths are relative to `image_folder` (None: as written). Metrics come overall
    and per value of each `group_by` field that varies (category, POPE strategy), each
    with its `chance` / `majority` baselines. The records (id, question, prediction,
    parsed, answer, score, correct, groups) go to `predictions_path` as JSONL when given.
    The model is put in eval mode for the run and back in its previous mode after.
    """
    check_settings(batch_size, max_new_tokens, on_bad_image)
    check_questions(questions, task)
    folder = Path(image_folder) if image_folder is not None else None
    skipped: list[dict[str, str]] = []
    runnable = []
    for question in questions:  # missing files before any generation: fail (or skip) fast
        path = _image_path(question, folder)
        if path is not None and not path.is_file():
            _bad_image(question, ValueError(f"image file {path} does not exist"), on_bad_image, skipped)
        else:
            runnable.append(question)

    predictions: dict[Any, str] = {}
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(runnable), desc=name, unit="question", disable=not progress) as bar:
            for start in range(0, len(runnable), batch_size):
                batch, images = [], []
                for question in runnable[start : start + batch_size]:
                    path = _image_path(question, folder)
                    try:
                        images.append([load_image(path)] if path is not None else [])
                    except ValueError as error:
                        _bad_image(question, error, on_bad_image, skipped)
                        continue
                    batch.append(question)
                if batch:
                    prompts = [question_prompt(processor, question) for question in batch]
                    answers = generate_answers(model, processor, prompts, images, max_new_tokens)
                    predictions.update((question["id"], answer) for question, answer in zip(batch, answers))
                bar.update(len(runnable[start : start + batch_size]))
    finally:
        model.train(was_training)

    scored = [question for question in questions if question["id"] in predictions]
    records = [_record(question, predictions[question["id"]], task, group_by) for question in scored]
    metrics, groups = _metrics(task, scored, records, group_by)
    written = write_predictions(predictions_path, records) if predictions_path is not None else None
    return EvalResult(name, task, metrics, groups, records, skipped, written)


# ---- question files --------------------------------------------------------------------------


def _load_sets(files: Sequence[str | Path], task: str | None) -> list[QuestionSet]:
    """Read and check every file before any model runs; table names must differ."""
    sets = [load_question_set(path, task) for path in files]
    names = [question_set.name for question_set in sets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"several question files are called {repeated}; give files with different names")
    return sets


def _evaluate_sets(
    model: Any,
    processor: Any,
    sets: Sequence[QuestionSet],
    image_folder: str | Path | None,
    batch_size: int,
    max_new_tokens: int,
    on_bad_image: str,
    progress: bool,
) -> dict[str, EvalResult]:
    results = {}
    for question_set in sets:
        results[question_set.name] = evaluate(
            model,
            processor,
            question_set.questions,
            image_folder if image_folder is not None else question_set.path.parent,
            batch_size,
            max_new_tokens,
            question_set.task,
            name=question_set.name,
            on_bad_image=on_bad_image,
            progress=progress,
        )
    return results


def write_results(output_dir: str | Path, results: Mapping[str, EvalResult]) -> Path:
    """`predictions_<set>.jsonl` per set, `results.json` (all metrics and skips) and `results.md` in `output_dir`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        result.predictions_path = write_predictions(out / f"predictions_{name}.jsonl", result.records)
    summary = {name: result.to_dict() for name, result in results.items()}
    (out / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "results.md").write_text(results_markdown(results), encoding="utf-8")
    return out


def evaluate_files(
    model: Any,
    processor: Any,
    files: Sequence[str | Path],
    image_folder: str | Path | None = None,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    output_dir: str | Path | None = None,
    *,
    task: str | None = None,
    on_bad_image: str = "error",
    progress: bool = True,
) -> dict[str, EvalResult]:
    """Evaluate each question file; results by set name (`eval_vqa.jsonl` -> `vqa`), in file order.

    Every file is read and checked before generation starts. The task of each comes from
    its name unless `task` is given (`questions.infer_task`); images are relative to
    `image_folder`, by default the file's own folder (where `llavakit data synth` puts
    both). With `output_dir` (checked before generation, written after it; files of the
    same names are replaced): `predictions_<set>.jsonl` per set, `results.json` (all metrics
    and skips) and `results.md` (the markdown table).
    """
    if output_dir is not None:
        check_writable_dir(output_dir)
    sets = _load_sets(files, task)
    results = _evaluate_sets(model, processor, sets, image_folder, batch_size, max_new_tokens, on_bad_image, progress)
    if output_dir is not None:
        write_results(output_dir, results)
    return results


def evaluate_main(
    model_path: str,
    data: list[str],
    image_folder: str | None = None,
    output: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    device: str | None = None,
    *,
    task: str | None = None,
    on_bad_image: str = "error",
    overwrite: bool = False,
    dtype: str | None = None,
    device_map: str | None = None,
    quantization: str | None = None,
) -> int:
    """`llavakit eval`: load a llavakit checkpoint, evaluate the files, print the table; returns 0.

    Everything that can be checked is checked before the model loads: the output folder
    (see the module docstring), the task, every question file, the placement (device, device
    map, quantization) and the checkpoint folder. Bad input raises a `LlavaKitError` /
    ValueError / FileNotFoundError naming it, which the command reports in one line. The model
    loads as chat loads it (`load_checkpoint`; `dtype` None: `inference_dtype`'s choice).
    """
    from rich.console import Console

    from llavakit.model.checkpoint import check_placement, inference_dtype, load_checkpoint
    from llavakit.processing.processor import LlavaKitProcessor

    if output is not None:
        inputs = [model_path, *data, *([image_folder] if image_folder else [])]
        check_output_dir(output, overwrite, [("the input", path) for path in inputs])
    check_settings(batch_size, max_new_tokens, on_bad_image)
    if task is not None:
        get_task(task)
    sets = _load_sets(data, task)
    check_placement(device, device_map, quantization)
    model, processor = load_checkpoint(
        model_path,
        LlavaKitProcessor,
        device,
        inference_dtype(dtype, device, device_map, quantization),
        device_map=device_map,
        quantization=quantization,
    )
    results = _evaluate_sets(model, processor, sets, image_folder, batch_size, max_new_tokens, on_bad_image, True)
    if output is not None:
        write_results(prepare_output_dir(output, overwrite), results)
    console = Console()
    console.print(results_table(results, title=f"Evaluation of {model_path}"))
    if output is not None:
        console.print(f"predictions, results.json and results.md in {output}")
    return 0
