"""Benchmark answering throughput: batched, left-padded greedy generation (16 a batch) vs one question at a time.

Run:  .venv/bin/python benchmarks/eval_throughput.py [--questions 64] [--batch 16] [--max-new-tokens 8] [--threads 1]

Both sides run `llavakit.eval.benchmark_run.answer_questions`, the path `llavakit eval --task` takes,
on the same tiny random LLaVA (CLIP + MLP connector + Llama, built offline from `llavakit.tiny`)
over a POPE folder written here in the published format (one question per image, images of a few
sizes). One side asks `--batch` questions per `generate` call, the other one at a time. A tiny
model spends most of each decoding step in per-call work (Python, the vision tower's launch, the
cache bookkeeping) that a batch shares, which is what batching buys at any scale; on a GPU with a
7B model the per-token matmuls also fill the device better.

Printed: questions per second of each, their ratio (goal >= 3), and whether both sides gave the
same answers (batched left-padded answers equal one-by-one answers). One run after a warm-up
question on each side; timings on a shared machine move by a few percent.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from llavakit.eval.benchmark_run import answer_questions
from llavakit.eval.benchmarks import load_benchmark
from llavakit.eval.benchmarks.base import BenchmarkData
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import build_tiny_tokenizer, tiny_llava_config

THINGS = ["dog", "cat", "traffic light", "car", "person", "bottle", "chair", "bird"]


def write_pope(folder: Path, questions: int) -> BenchmarkData:
    """A POPE split file of `questions` lines and their images (sizes vary, as COCO's do)."""
    images = folder / "val2014"
    images.mkdir(parents=True)
    lines = []
    for index in range(questions):
        name = f"COCO_val2014_{index:012d}.jpg"
        Image.new("RGB", (24 + 8 * (index % 5), 20 + 6 * (index % 3)), (17 * index % 255, 90, 200)).save(images / name)
        thing = THINGS[index % len(THINGS)]
        label = "yes" if index % 2 else "no"
        lines.append(
            {"question_id": index + 1, "image": name, "text": f"Is there a {thing} in the image?", "label": label}
        )
    pope = folder / "pope"
    pope.mkdir()
    (pope / "coco_pope_random.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return load_benchmark("pope", [pope], images)


def tiny_model() -> tuple[LlavaKitForCausalLM, LlavaKitProcessor]:
    """A tiny random LLaVA and its processor (Vicuna template), as the tests build them."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_llava_config(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    return model, LlavaKitProcessor.from_model_config(tokenizer, config, template="vicuna_v1")


def timed(model, processor, data: BenchmarkData, batch_size: int, max_new_tokens: int) -> tuple[float, dict]:
    """Seconds to answer every question at `batch_size`, after one warm-up question; and the answers."""
    options = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False)
    answer_questions(model, processor, data.questions[:1], **options)
    start = time.perf_counter()
    run = answer_questions(model, processor, data.questions, **options)
    return time.perf_counter() - start, run.predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = tiny_model()
    with tempfile.TemporaryDirectory() as folder:
        data = write_pope(Path(folder), args.questions)
        single_seconds, single = timed(model, processor, data, 1, args.max_new_tokens)
        batched_seconds, batched = timed(model, processor, data, args.batch, args.max_new_tokens)

    settings = f"greedy, {args.max_new_tokens} new tokens, {args.threads} thread(s)"
    print(f"{args.questions} POPE questions, tiny LLaVA, {settings}")
    table = Table(title="answering throughput")
    for column in ("mode", "seconds", "questions / s"):
        table.add_column(column, justify="right")
    table.add_row("one by one", f"{single_seconds:.2f}", f"{args.questions / single_seconds:.1f}")
    table.add_row(f"batched ({args.batch})", f"{batched_seconds:.2f}", f"{args.questions / batched_seconds:.1f}")
    console = Console()
    console.print(table)
    ratio = single_seconds / batched_seconds
    print(f"batched / one by one: {ratio:.2f}x (goal >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    print(f"same answers: {batched == single}")


if __name__ == "__main__":
    main()
