"""`llavakit serve` through the official `openai` client on loopback: plain and streamed answers, images,
usage, API keys, the model list, health and metrics, the queue bound, and greedy answers equal to
`llavakit chat` and `model.generate` for the same checkpoint, image and question.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_serve_api.py
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import openai
import pytest
import torch
from PIL import Image

from conftest import randomized
from llavakit.cli import main
from llavakit.errors import CheckpointError, ConfigError
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.images import load_image
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.serve.app import create_app
from llavakit.serve.chat import ChatSession, load_chat_model
from llavakit.serve.command import _settings, add_serve_parser
from llavakit.serve.server import BackgroundServer
from llavakit.serve.settings import ServeSettings
from llavakit.tiny import tiny_llava_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "test-key"
MODEL = "tiny-llava"
QUESTION = "What is in the picture?"
TOKENS = 24


def save_tiny_checkpoint(folder: Path, tokenizer) -> Path:
    """A tiny llavakit checkpoint with weights far from zero, so images and prompts show in the answers."""
    config = tiny_llava_config(tokenizer.convert_tokens_to_ids("<image>"))
    randomized(LlavaKitForCausalLM(config), seed=3).save_pretrained(folder)
    LlavaKitProcessor.from_model_config(tokenizer, config, "vicuna_v1").save_pretrained(folder)
    return folder


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def user_message(question: str, *urls: str) -> dict:
    """A user message: an image part per URL, then the question, as OpenAI's clients send them."""
    return {"role": "user", "content": [*(image_part(url) for url in urls), {"type": "text", "text": question}]}


def ask(question: str, *images: Path) -> list[dict]:
    """The messages of one question about image files, sent as base64 data URIs."""
    return [user_message(question, *(data_uri(image) for image in images))]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer) -> Path:
    root = tmp_path_factory.mktemp("serve_api")
    save_tiny_checkpoint(root / "ckpt", tiny_tokenizer)
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for name, shape in (("a.png", (40, 56, 3)), ("b.png", (48, 32, 3)), ("photos/c.png", (30, 30, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / name)
    return root


@pytest.fixture(scope="module")
def loaded(files):
    return load_chat_model(files / "ckpt")


@pytest.fixture(scope="module")
def server(files, loaded):
    settings = ServeSettings(model_name=MODEL, api_key=KEY, image_folder=files / "photos")
    with BackgroundServer(create_app(*loaded, settings)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def complete(client: openai.OpenAI, messages: list, **options):
    """A chat completion, greedy and `TOKENS` long unless `options` say otherwise."""
    return client.chat.completions.create(
        model=MODEL, messages=messages, **{"temperature": 0, "max_tokens": TOKENS, **options}
    )


def generate_answer(model, processor, conversation: list[dict], images: list[Path]) -> tuple[str, int, int]:
    """`model.generate`'s greedy answer, with the prompt's and the answer's token counts."""
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    pictures = [load_image(path) for path in images] or None
    inputs = processor(text=prompt, images=pictures, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=TOKENS,
            do_sample=False,
            eos_token_id=processor.stop_token_ids,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
    new = output[0, inputs["input_ids"].shape[1] :]
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip(), inputs["input_ids"].shape[1], len(new)


# ---- answers --------------------------------------------------------------------------------


def test_greedy_answer_equals_llavakit_chat_and_generate(client, files, loaded, capsys):
    model, processor = loaded
    reply = complete(client, ask(QUESTION, files / "a.png"))
    answer = reply.choices[0].message.content
    session = ChatSession(model, processor, files / "a.png", max_new_tokens=TOKENS)
    assert answer == session.ask(QUESTION)
    conversation = [{"role": "user", "content": f"<image>\n{QUESTION}"}]
    assert answer == generate_answer(model, processor, conversation, [files / "a.png"])[0]
    argv = ["chat", "--model", str(files / "ckpt"), "--image", str(files / "a.png"), "-q", QUESTION]
    assert main([*argv, "--max-new-tokens", str(TOKENS)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"ASSISTANT: {answer}".rstrip()
    assert answer and reply.model == MODEL and reply.choices[0].message.role == "assistant"
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"


def test_streamed_chunks_join_to_the_plain_answer(client, files):
    plain = complete(client, ask(QUESTION, files / "a.png"))
    chunks = list(complete(client, ask(QUESTION, files / "a.png"), stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(pieces) == plain.choices[0].message.content
    assert sum(1 for piece in pieces if piece) > 1  # it really came in pieces
    finals = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finals == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)


def test_the_stream_ends_with_done(server, files):
    body = {"model": MODEL, "messages": ask(QUESTION, files / "a.png"), "stream": True, "max_tokens": 3}
    status, headers, raw = post(server, body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [block for block in raw.decode().split("\n\n") if block]
    assert all(block.startswith("data: ") for block in events) and events[-1] == "data: [DONE]"


def test_two_images_in_order(client, files, loaded):
    model, processor = loaded
    a, b = files / "a.png", files / "b.png"
    reply = complete(client, ask(QUESTION, a, b))
    session = ChatSession(model, processor, [a, b], max_new_tokens=TOKENS)
    assert reply.choices[0].message.content == session.ask(QUESTION)
    swapped = complete(client, ask(QUESTION, b, a))
    expected = generate_answer(model, processor, [{"role": "user", "content": f"<image>\n<image>\n{QUESTION}"}], [b, a])
    assert swapped.choices[0].message.content == expected[0]
    assert reply.usage.prompt_tokens == swapped.usage.prompt_tokens == expected[1]


def test_text_only(client, loaded):
    model, processor = loaded
    reply = complete(client, [{"role": "user", "content": "Hello, how are you?"}])
    assert reply.choices[0].message.content == ChatSession(model, processor, max_new_tokens=TOKENS).ask(
        "Hello, how are you?"
    )


def test_usage_counts_image_tokens_and_generated_tokens(client, files, loaded):
    model, processor = loaded
    reply = complete(client, ask(QUESTION, files / "a.png", files / "b.png"))
    conversation = [{"role": "user", "content": f"<image>\n<image>\n{QUESTION}"}]
    _, prompt_tokens, completion_tokens = generate_answer(
        model, processor, conversation, [files / "a.png", files / "b.png"]
    )
    unexpanded = processor.tokenizer(processor.apply_chat_template(conversation))["input_ids"]  # one id per <image>
    assert prompt_tokens == len(unexpanded) - 2 + 2 * processor.num_image_tokens
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, completion_tokens)
    assert usage.total_tokens == prompt_tokens + completion_tokens


def test_multi_turn_history_equals_a_chat_session(client, files, loaded):
    model, processor = loaded
    session = ChatSession(model, processor, files / "a.png", max_new_tokens=TOKENS)
    first = session.ask(QUESTION)
    second = session.ask("Describe it in detail.")
    messages = [
        user_message(QUESTION, data_uri(files / "a.png")),
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Describe it in detail."},
    ]
    assert complete(client, messages).choices[0].message.content == second


def test_a_local_image_under_the_folder_equals_its_data_uri(client, files):
    by_path = complete(client, [user_message(QUESTION, "c.png")])
    by_file_url = complete(client, [user_message(QUESTION, (files / "photos" / "c.png").as_uri())])
    by_data = complete(client, ask(QUESTION, files / "photos" / "c.png"))
    texts = {reply.choices[0].message.content for reply in (by_path, by_file_url, by_data)}
    assert len(texts) == 1


def test_stop_sequences_seed_and_max_tokens(client, files):
    messages = ask(QUESTION, files / "a.png")
    full = complete(client, messages).choices[0].message.content
    cut_at = full.split()[2]
    stopped = complete(client, messages, stop=[cut_at])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == full[: full.index(cut_at)].strip()
    short = complete(client, messages, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    sampled = [
        complete(client, messages, temperature=1.2, top_p=0.95, seed=seed).choices[0].message.content
        for seed in (5, 5, 6)
    ]
    assert sampled[0] == sampled[1] != sampled[2]


# ---- keys, models, health, metrics, page ----------------------------------------------------


def test_a_wrong_or_missing_api_key_is_refused(server, files):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.chat.completions.create(model=MODEL, messages=ask(QUESTION, files / "a.png"), max_tokens=2)
    assert refused.value.status_code == 401 and "Incorrect API key" in refused.value.message
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    status, _, raw = post(server, {"model": MODEL, "messages": ask(QUESTION)}, key=None)
    assert status == 401 and "Missing API key" in json.loads(raw)["error"]["message"]


def test_models_health_metrics_and_page(client, server):
    assert [model.id for model in client.models.list()] == [MODEL]
    assert json.loads(get(server, "/health")[2]) == {"status": "ok"}
    complete(client, ask("Hi?"), max_tokens=2)
    status, headers, raw = get(server, "/metrics")
    metrics = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in ("requests_total", "prompt_tokens_total", "completion_tokens_total", "queue_length"):
        assert f"# TYPE llavakit_{name}" in metrics
    assert 'llavakit_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics
    assert "llavakit_request_latency_seconds_count" in metrics
    status, headers, page = get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/v1/chat/completions" in page and b"https://" not in page and b"http://" not in page


# ---- raw HTTP -------------------------------------------------------------------------------


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post(server, body: dict, key: str | None = KEY):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return request(server, "POST", "/v1/chat/completions", json.dumps(body).encode(), headers)


def get(server, path: str):
    return request(server, "GET", path, headers={"Authorization": f"Bearer {KEY}"})


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_past_the_queue_bound_a_request_gets_503_with_retry_after(loaded):
    settings = ServeSettings(model_name=MODEL, max_batch_size=1, max_queue=1)
    app = create_app(*loaded, settings)
    engine = app.state.server.engine
    long_request = {"model": MODEL, "messages": ask(QUESTION), "max_tokens": 200, "temperature": 0}
    with BackgroundServer(app) as running:
        results = []
        threads = [threading.Thread(target=lambda: results.append(post(running, long_request))) for _ in range(2)]
        threads[0].start()
        wait_until(lambda: engine.running == 1)
        threads[1].start()
        wait_until(lambda: engine.waiting == 1)
        for stream in (False, True):
            status, headers, raw = post(running, long_request | {"stream": stream})
            assert status == 503 and headers["retry-after"] == "1"
            error = json.loads(raw)["error"]
            assert "busy" in error["message"] and error["code"] == "queue_full"
        for thread in threads:
            thread.join(60)
        assert [result[0] for result in results] == [200, 200]


def test_a_client_that_leaves_mid_stream_stops_its_generation(server, loaded):
    engine = server.server.config.app.state.server.engine
    body = json.dumps({"model": MODEL, "messages": ask(QUESTION), "stream": True, "max_tokens": 1500}).encode()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
    response = connection.getresponse()
    assert response.status == 200 and response.read1(64)
    wait_until(lambda: engine.running == 1)
    connection.sock.shutdown(2)
    connection.close()
    wait_until(lambda: engine.running == 0, timeout=10)


def test_remote_images_only_when_allowed(loaded, files, client):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = lambda *args: Quiet(*args, directory=str(files))  # noqa: E731
    images = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{images.server_address[1]}/a.png"
    try:
        with pytest.raises(openai.BadRequestError, match="remote image URLs are off"):
            complete(client, [user_message(QUESTION, url)])
        settings = ServeSettings(model_name=MODEL, allow_remote_images=True)
        with BackgroundServer(create_app(*loaded, settings)) as running:
            remote = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
            by_url = complete(remote, [user_message(QUESTION, url)]).choices[0].message.content
            missing = url.replace("a.png", "missing.png")
            with pytest.raises(openai.BadRequestError, match="cannot fetch the image"):
                complete(remote, [user_message(QUESTION, missing)])
    finally:
        images.shutdown()
    assert by_url == complete(client, ask(QUESTION, files / "a.png")).choices[0].message.content


# ---- the command ----------------------------------------------------------------------------


def test_the_serve_command_parses_into_settings(files, monkeypatch):
    parser = argparse.ArgumentParser(prog="llavakit")
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["serve", str(files / "ckpt"), "--max-batch-size", "4", "--image-folder", str(files / "photos")]
    )
    monkeypatch.setenv("LLAVAKIT_API_KEY", "from-env")
    settings = _settings(args)
    assert (settings.model_name, settings.api_key, settings.max_batch_size) == ("ckpt", "from-env", 4)
    assert settings.image_folder == (files / "photos").resolve() and args.run.__name__ == "run_serve"
    assert args.host == "127.0.0.1" and args.port == 8000


def test_the_command_names_a_taken_port_a_missing_checkpoint_and_bad_limits(files, tmp_path):
    parser = argparse.ArgumentParser(prog="llavakit")
    add_serve_parser(parser.add_subparsers(dest="command"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = parser.parse_args(["serve", str(files / "ckpt"), "--port", str(port)])
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            args.run(args)
    args = parser.parse_args(["serve", str(tmp_path / "nothing"), "--port", "0"])
    with pytest.raises(CheckpointError, match="does not exist"):
        args.run(args)
    with pytest.raises(ConfigError, match="max_batch_size must be at least 1"):
        _settings(parser.parse_args(["serve", str(files / "ckpt"), "--max-batch-size", "0"]))
    with pytest.raises(ConfigError, match="is not an existing folder"):
        _settings(parser.parse_args(["serve", str(files / "ckpt"), "--image-folder", str(tmp_path / "none")]))


def test_the_command_module_loads_no_heavy_library():
    code = (
        "import sys, argparse, llavakit.serve.command as c\n"
        "c.add_serve_parser(argparse.ArgumentParser().add_subparsers())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'fastapi', 'uvicorn'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
