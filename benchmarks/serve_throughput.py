"""`llavakit serve` under 32 concurrent clients: continuous batching vs one request at a time.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_throughput.py [--seconds 60] [--clients 32]

Why: batching is what lets one model answer many users; a decoding step for 32 requests costs
little more than one for a single request, so tokens/s should grow with the batch. A tiny
random checkpoint is written to a temporary folder and served twice on loopback, each time in
a child process: with `--max-batch-size 32` (continuous batching) and `--max-batch-size 1`
(one at a time). Each run: a warm-up, then `--clients` clients sending greedy requests (two,
one or no images; plain and streamed) for `--seconds`. Printed per run: requests, errors,
p50/p95 latency, completion tokens/s, the mean batch size of the decoding steps (from
/metrics), the server's resident memory after warm-up and at the end; then the ratio of
batched to one-at-a-time tokens/s (the goal is at least 4x at 32 clients).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.serve.loadgen import LoadResult, run_load, start_server_process
from llavakit.tiny import build_tiny_tokenizer, tiny_llava_config

MODEL = "tiny-llava"


def write_checkpoint(folder: Path, seed: int = 3) -> Path:
    """A tiny llavakit checkpoint with weights far from zero (CLIP + Llama shapes, random)."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_llava_config(tokenizer.convert_tokens_to_ids("<image>"))
    model = LlavaKitForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.save_pretrained(folder)
    LlavaKitProcessor.from_model_config(tokenizer, config, "vicuna_v1").save_pretrained(folder)
    return folder


def request_bodies(max_tokens: int) -> list[dict]:
    """Greedy requests with two, one or no images, each plain and streamed."""
    rng = np.random.default_rng(0)
    uris = []
    for shape in ((40, 56, 3), (48, 32, 3)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buffer, format="PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    bodies = []
    for images, question in ((uris, "Compare the two images."), (uris[:1], "What is it?"), ([], "Hello!")):
        content = [{"type": "image_url", "image_url": {"url": url}} for url in images]
        content.append({"type": "text", "text": question})
        for stream in (False, True):
            body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0}
            body |= {"max_tokens": max_tokens, "stream": stream}
            if stream:
                body["stream_options"] = {"include_usage": True}
            bodies.append(body)
    return bodies


def mean_batch_size(url: str) -> float:
    metrics = urllib.request.urlopen(url + "/metrics").read().decode()
    steps = float(re.search(r"^llavakit_decode_steps_total (\S+)$", metrics, re.M).group(1))
    rows = float(re.search(r"^llavakit_decode_rows_total (\S+)$", metrics, re.M).group(1))
    return rows / steps if steps else 0.0


def measure(checkpoint: Path, batch_size: int, args: argparse.Namespace) -> tuple[LoadResult, float, int, int]:
    """One server run: (load result, mean batch size, RSS after warm-up, RSS at the end)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    flags = ("--model-name", MODEL, "--max-batch-size", str(batch_size), "--max-queue", str(4 * args.clients))
    server = start_server_process(checkpoint, *flags, "--log-level", "warning", env=env)
    try:
        bodies = request_bodies(args.max_tokens)
        run_load(server.host, server.port, bodies, args.clients, args.warmup)
        after_warmup = server.resident_bytes()
        result = run_load(server.host, server.port, bodies, args.clients, args.seconds)
        return result, mean_batch_size(server.url), after_warmup, server.resident_bytes()
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured load per run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    console = Console(width=120)
    table = Table(title=f"llavakit serve, {args.clients} clients, {args.seconds:.0f} s per run (tiny model, CPU)")
    for column in ("batching", "requests", "errors", "p50 s", "p95 s", "tokens/s", "mean batch", "RSS MiB"):
        table.add_column(column, justify="right")
    throughput = {}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder) / "ckpt")
        for name, batch_size in (("continuous, 32", 32), ("one at a time", 1)):
            result, batch, before, after = measure(checkpoint, batch_size, args)
            throughput[name] = result.tokens_per_second
            table.add_row(
                name,
                str(result.requests),
                str(len(result.errors)),
                f"{result.percentile(0.5):.3f}",
                f"{result.percentile(0.95):.3f}",
                f"{result.tokens_per_second:.0f}",
                f"{batch:.1f}",
                f"{before / 2**20:.0f} -> {after / 2**20:.0f}",
            )
            for error in result.errors[:3]:
                console.print(f"[red]{name}: {error}")
    console.print(table)
    ratio = throughput["continuous, 32"] / max(throughput["one at a time"], 1e-9)
    console.print(f"batched / one-at-a-time tokens/s: {ratio:.1f}x (goal: at least 4x)")


if __name__ == "__main__":
    main()
