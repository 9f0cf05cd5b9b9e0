"""32 concurrent clients against `llavakit serve` (a child process) on loopback for a bounded time: no errors,
latency and throughput reported, greedy answers unchanged by batching, resident memory flat after warm-up.

The 60-second run with batched vs one-at-a-time throughput is benchmarks/serve_throughput.py.
Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -s tests/test_serve_load.py
"""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest
from PIL import Image

from conftest import randomized
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.serve.loadgen import chat_request, run_load, start_server_process
from llavakit.tiny import tiny_llava_config

CLIENTS = 32
SECONDS = 12.0
MODEL = "tiny-llava"
# Resident memory may settle (allocator caches, first batch shapes) but not keep growing.
GROWTH_LIMIT_BYTES = 64 << 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("serve_load") / "ckpt"
    config = tiny_llava_config(tiny_tokenizer.convert_tokens_to_ids("<image>"))
    randomized(LlavaKitForCausalLM(config), seed=3).save_pretrained(folder)
    LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1").save_pretrained(folder)
    return folder


def bodies() -> list[dict]:
    """Greedy requests: with two, one or no images, plain and streamed, of different lengths."""
    rng = np.random.default_rng(0)
    uris = []
    for shape in ((40, 56, 3), (48, 32, 3)):
        path_bytes = _png(rng.integers(0, 255, shape, dtype=np.uint8))
        uris.append("data:image/png;base64," + base64.b64encode(path_bytes).decode())
    requests = []
    for index, (images, question) in enumerate(
        [(uris, "Compare the two images."), (uris[:1], "What is in the picture?"), ([], "Hello, how are you?")]
    ):
        content = [{"type": "image_url", "image_url": {"url": url}} for url in images]
        content.append({"type": "text", "text": question})
        for stream in (False, True):
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": content}],
                "temperature": 0,
                "max_tokens": 16 + 8 * index,
                "stream": stream,
            }
            if stream:
                body["stream_options"] = {"include_usage": True}
            requests.append(body)
    return requests


def _png(pixels: np.ndarray) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_32_clients_for_a_bounded_time(checkpoint):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = start_server_process(
        checkpoint, "--model-name", MODEL, "--max-batch-size", "32", "--log-level", "warning", env=env
    )
    try:
        requests = bodies()
        alone = [chat_request(server.host, server.port, body) for body in requests]  # one at a time, batch of one
        assert all(status == 200 for status, _, _ in alone)
        warmup = run_load(server.host, server.port, requests, CLIENTS, 2.0)
        assert not warmup.errors
        after_warmup = server.resident_bytes()
        result = run_load(server.host, server.port, requests, CLIENTS, SECONDS)
        at_end = server.resident_bytes()
    finally:
        server.close()
    print(f"\n{CLIENTS} clients: {result.summary()}")
    print(f"server resident memory: {after_warmup / 2**20:.0f} MiB after warm-up, {at_end / 2**20:.0f} MiB at the end")
    assert result.errors == []
    assert result.requests >= 2 * CLIENTS
    for which, (_, _, text) in enumerate(alone):
        assert result.answers[which] <= {text}, f"request {which} answered differently under load"
    assert at_end - after_warmup < GROWTH_LIMIT_BYTES
