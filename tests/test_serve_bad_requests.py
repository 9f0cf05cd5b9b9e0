"""Bad requests to `llavakit serve`, table-driven: each gets the right 4xx in OpenAI's error JSON with a
message naming the problem, and the server answers a good request right after each one.

Kinds: API key, body size and type, JSON, schema (unknown fields, wrong types, bad values,
unsupported parameters), conversation rules, images (base64, media types, sizes, decompression
bombs, formats, counts, local paths, remote URLs), context length, and mixes of them (the first
check a request fails decides: key, then body, then JSON, then schema, then images).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_serve_bad_requests.py
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import randomized
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.serve.app import create_app
from llavakit.serve.chat import load_chat_model
from llavakit.serve.server import BackgroundServer
from llavakit.serve.settings import ServeSettings
from llavakit.tiny import tiny_llava_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "test-key"
MODEL = "tiny-llava"
BODY_LIMIT = 1 << 20
IMAGE_LIMIT = 64 << 10
MAX_IMAGES = 3


# ---- images -------------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


NOISE = np.random.default_rng(0)
SMALL = png(Image.fromarray(NOISE.integers(0, 255, (40, 56, 3), dtype=np.uint8)))
LARGE = png(Image.fromarray(NOISE.integers(0, 255, (200, 200, 3), dtype=np.uint8)))  # ~120 KB of noise
BOMB = png(Image.new("1", (5000, 5000)))  # 25 M pixels in a few kilobytes
ICO = io.BytesIO()
Image.new("RGB", (16, 16)).save(ICO, format="ICO")


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def user(*parts: Any) -> dict:
    return {"role": "user", "content": list(parts)}


def body(*messages: dict, **fields: Any) -> dict:
    """A request body: `messages` (default: one text question) and `fields`, greedy and short."""
    return {"model": MODEL, "messages": list(messages) or [user(text("Hi?"))], "max_tokens": 2, **fields}


def without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


def with_image(url: str, **fields: Any) -> dict:
    return body(user(image(url), text("What is it?")), **fields)


# ---- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad request: its body (a dict is sent as JSON), its headers, what must come back."""

    name: str
    payload: dict | bytes | Callable[[], bytes]
    status: int
    said: tuple[str, ...]
    param: str | None = None
    headers: dict[str, str | None] = field(default_factory=dict)
    chunked: bool = False


BAD = [
    # API key
    Bad("no key", body(), 401, ("Missing API key",), headers={"Authorization": None}),
    Bad("wrong key", body(), 401, ("Incorrect API key",), headers={"Authorization": "Bearer nope"}),
    Bad("basic scheme", body(), 401, ("Missing API key",), headers={"Authorization": f"Basic {KEY}"}),
    Bad("empty bearer", body(), 401, ("Missing API key",), headers={"Authorization": "Bearer "}),
    Bad("key in another header", body(), 401, ("Missing API key",), headers={"Authorization": None, "api-key": KEY}),
    # body
    Bad("body over the limit", b"{" + b" " * BODY_LIMIT + b"}", 413, ("over the limit", str(BODY_LIMIT))),
    Bad("chunked body over the limit", lambda: b" " * (BODY_LIMIT + 10), 413, ("over the limit",), chunked=True),
    Bad("content type text", body(), 415, ("application/json", "text/plain"), headers={"Content-Type": "text/plain"}),
    Bad("content type form", body(), 415, ("application/json",), headers={"Content-Type": "multipart/form-data"}),
    # JSON
    Bad("empty body", b"", 400, ("not valid JSON",)),
    Bad("truncated JSON", b'{"model": "tiny-llava", "messages": [', 400, ("not valid JSON", "line 1")),
    Bad("single quotes", b"{'model': 'tiny-llava'}", 400, ("not valid JSON",)),
    Bad("trailing data", json.dumps(body()).encode() + b"x", 400, ("not valid JSON", "Extra data")),
    Bad("not UTF-8", b'{"model": "\xff\xfe"}', 400, ("not UTF-8",)),
    Bad("nested too deeply", b"[" * 200_000 + b"]" * 200_000, 400, ("not valid JSON",)),
    Bad("a JSON list", b"[1, 2]", 400, ("must be a JSON object", "list")),
    Bad("a JSON string", b'"hello"', 400, ("must be a JSON object", "str")),
    Bad(
        "NaN temperature",
        json.dumps(body()).encode()[:-1] + b', "temperature": NaN}',
        400,
        ("NaN is not a JSON number",),
    ),
    # schema: required fields and unknown ones
    Bad("no model", without(body(), "model"), 400, ("model is required",), "model"),
    Bad("no messages", without(body(), "messages"), 400, ("messages is required",), "messages"),
    Bad("empty messages", body() | {"messages": []}, 400, ("messages", "at least 1"), "messages"),
    Bad("messages a string", body() | {"messages": "Hi?"}, 400, ("messages",), "messages"),
    Bad("unknown field", body(temprature=0.5), 400, ("Unrecognized request argument", "temprature"), "temprature"),
    Bad("unknown message field", body({"role": "user", "content": "Hi", "mood": 1}), 400, ("mood",)),
    Bad("unknown part field", body(user({"type": "text", "text": "Hi", "bold": True})), 400, ("bold",)),
    Bad(
        "unknown image_url field",
        body(user({"type": "image_url", "image_url": {"url": "x", "size": 3}})),
        400,
        ("size",),
    ),
    Bad("no role", body({"content": "Hi"}), 400, ("messages[0].role is required",), "messages[0].role"),
    Bad("tool role", body({"role": "tool", "content": "x"}), 400, ("messages[0].role", "'tool'"), "messages[0].role"),
    Bad("function role", body({"role": "function", "content": "x"}), 400, ("'function'",)),
    Bad("content a number", body({"role": "user", "content": 5}), 400, ("messages[0].content", "string or a list")),
    Bad("content null", body({"role": "user", "content": None}), 400, ("messages[0].content",)),
    Bad("audio part", body(user({"type": "input_audio", "input_audio": {}})), 400, ("input_audio", "image_url")),
    Bad("part without type", body(user({"text": "Hi"})), 400, ("messages[0].content[0]",)),
    Bad("text part without text", body(user({"type": "text"})), 400, ("messages[0].content[0].text is required",)),
    Bad("image part without url", body(user({"type": "image_url", "image_url": {}})), 400, ("url is required",)),
    Bad("image url a number", body(user({"type": "image_url", "image_url": {"url": 7}})), 400, ("valid string",)),
    Bad(
        "image detail odd",
        body(user({"type": "image_url", "image_url": {"url": "x", "detail": "max"}})),
        400,
        ("detail",),
    ),
    # schema: values
    Bad("max_tokens zero", body(max_tokens=0), 400, ("max_tokens", "greater than or equal to 1"), "max_tokens"),
    Bad("max_tokens a string", body(max_tokens="5"), 400, ("max_tokens", "valid integer", "'5'"), "max_tokens"),
    Bad("max_tokens a float", body(max_tokens=2.5), 400, ("max_tokens", "valid integer"), "max_tokens"),
    Bad("max_tokens true", body(max_tokens=True), 400, ("max_tokens",), "max_tokens"),
    Bad("max_completion_tokens negative", body(max_completion_tokens=-1), 400, ("max_completion_tokens",)),
    Bad("temperature too high", body(temperature=3), 400, ("temperature", "less than or equal to 2"), "temperature"),
    Bad("temperature negative", body(temperature=-0.1), 400, ("temperature",), "temperature"),
    Bad("temperature a string", body(temperature="0.5"), 400, ("temperature", "valid number"), "temperature"),
    Bad("top_p zero", body(top_p=0), 400, ("top_p", "greater than 0"), "top_p"),
    Bad("top_p above one", body(top_p=1.5), 400, ("top_p",), "top_p"),
    Bad("two choices", body(n=2), 400, ("n must be 1",), "n"),
    Bad("five stops", body(stop=["a", "b", "c", "d", "e"]), 400, ("at most 4",), "stop"),
    Bad("empty stop", body(stop=[""]), 400, ("must not be empty",), "stop"),
    Bad("stop a number", body(stop=3), 400, ("stop",)),
    Bad("stream a string", body(stream="yes"), 400, ("stream", "valid boolean"), "stream"),
    Bad("seed a string", body(seed="abc"), 400, ("seed", "valid integer"), "seed"),
    Bad("stream_options alone", body(stream_options={"include_usage": True}), 400, ("only allowed with stream",)),
    Bad("tools", body(tools=[{"type": "function", "function": {"name": "f"}}]), 400, ("tools is not supported",)),
    Bad("logprobs", body(logprobs=True), 400, ("logprobs is not supported",), "logprobs"),
    Bad("json mode", body(response_format={"type": "json_object"}), 400, ("response_format is not supported",)),
    Bad("penalty", body(presence_penalty=1.0), 400, ("presence_penalty is not supported",)),
    Bad("unknown model", body(model="gpt-4o"), 404, ("'gpt-4o' does not exist", MODEL), "model"),
    # conversation rules
    Bad("assistant last", body(user(text("Hi")), {"role": "assistant", "content": "Hello"}), 400, ("last message",)),
    Bad("two user turns", body(user(text("Hi")), user(text("Again"))), 400, ("both 'user' turns",)),
    Bad(
        "system second",
        body(user(text("Hi")), {"role": "system", "content": "Be brief"}, user(text("And?"))),
        400,
        ("system message may only come first",),
    ),
    Bad("only a system message", body({"role": "system", "content": "Be brief"}), 400, ("last message",)),
    Bad(
        "image in an assistant turn",
        body(user(text("Hi")), {"role": "assistant", "content": [image(uri(SMALL))]}, user(text("And?"))),
        400,
        ("user messages only",),
        "messages[1].content[0]",
    ),
    Bad("placeholder as text", body(user(text("<image>\nWhat is it?"))), 400, ("'<image>'", "image_url parts")),
    Bad("placeholder in a string", body({"role": "user", "content": "look: <image>"}), 400, ("'<image>'",)),
    # images: data URIs
    Bad("malformed base64", with_image("data:image/png;base64,iVBOR@@@@"), 400, ("base64", "malformed")),
    Bad("base64 padding", with_image("data:image/png;base64,iVBORw0KGgo"), 400, ("base64", "padding")),
    Bad("not base64 encoded", with_image("data:image/png,rawbytes"), 400, ("base64-encoded",)),
    Bad("not an image type", with_image(uri(SMALL, "text/plain")), 400, ("'text/plain'", "not image/*")),
    Bad("no comma", with_image("data:image/png;base64"), 400, ("data URI must look like",)),
    Bad("empty data", with_image("data:image/png;base64,"), 400, ("no image data",)),
    Bad(
        "not an image",
        with_image(uri(b"hello, world! " * 4)),
        400,
        ("not an image",),
        "messages[0].content[0].image_url.url",
    ),
    Bad("icon format", with_image(uri(ICO.getvalue(), "image/x-icon")), 400, ("not an image this server reads",)),
    Bad("truncated png", with_image(uri(SMALL[: len(SMALL) // 2])), 400, ("cannot be decoded",)),
    Bad("image over the byte limit", with_image(uri(LARGE)), 400, ("bytes", str(IMAGE_LIMIT))),
    Bad("decompression bomb", with_image(uri(BOMB)), 400, ("5000x5000", "pixels", "more than the limit")),
    Bad("header claims gigapixels", with_image(uri(png_claiming(60000, 60000))), 400, ("pixels",)),
    Bad(
        "too many images", body(user(*[image(uri(SMALL))] * 4, text("Hi"))), 400, ("4 images", f"limit of {MAX_IMAGES}")
    ),
    Bad(
        "too many over turns",
        body(
            user(*[image(uri(SMALL))] * 2, text("Hi")),
            {"role": "assistant", "content": "Yes"},
            user(*[image(uri(SMALL))] * 2, text("And?")),
        ),
        400,
        ("4 images",),
    ),
    # images: paths and URLs
    Bad("remote URL", with_image("http://127.0.0.1:9/a.png"), 400, ("remote image URLs are off",)),
    Bad("remote https URL", with_image("https://example.invalid/a.png"), 400, ("remote image URLs are off",)),
    Bad("path outside the folder", with_image("../a.png"), 400, ("outside the image folder",)),
    Bad("absolute path outside", with_image("/etc/hostname"), 400, ("outside the image folder",)),
    Bad("file URL outside", with_image("file:///etc/hostname"), 400, ("outside the image folder",)),
    Bad("missing local file", with_image("nothere.png"), 400, ("does not exist",)),
    Bad("unknown scheme", with_image("ftp://127.0.0.1/a.png"), 400, ("unsupported image URL scheme", "'ftp'")),
    # context
    Bad(
        "max_tokens past the context",
        body(max_tokens=5000),
        400,
        ("maximum context length is 2048", "5000 in the completion"),
    ),
    Bad(
        "prompt past the context",
        body(user(text("red green blue " * 1200))),
        400,
        ("maximum context length", "messages"),
    ),
    Bad("images and answer past the context", with_image(uri(SMALL), max_tokens=2040), 400, ("images included",)),
    # mixes: the first check failed decides
    Bad("wrong key and broken JSON", b"{", 401, ("Incorrect API key",), headers={"Authorization": "Bearer nope"}),
    Bad("broken JSON over the limit", b"{" * (BODY_LIMIT + 1), 413, ("over the limit",)),
    Bad("unknown field and bad image", with_image("data:image/png;base64,@@", extra=1), 400, ("extra",)),
    Bad("unknown model and bad image", with_image("data:image/png;base64,@@", model="other"), 404, ("'other'",)),
    Bad("too many bad images", body(user(*[image("data:image/png;base64,@@")] * 4, text("Hi"))), 400, ("4 images",)),
    Bad(
        "good image then bomb",
        body(user(image(uri(SMALL)), image(uri(BOMB)), text("Hi"))),
        400,
        ("messages[0].content[1].image_url.url", "pixels"),
    ),
    Bad(
        "bad type inside a good turn",
        body(user(text("Hi")), {"role": "assistant", "content": "Yes"}, user(text("And?")), max_tokens="2"),
        400,
        ("max_tokens",),
    ),
]


def test_the_table_is_large_and_unique():
    assert len(BAD) >= 50 and len({bad.name for bad in BAD}) == len(BAD)


# ---- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("serve_bad")
    config = tiny_llava_config(tiny_tokenizer.convert_tokens_to_ids("<image>"))
    randomized(LlavaKitForCausalLM(config), seed=3).save_pretrained(root / "ckpt")
    LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1").save_pretrained(root / "ckpt")
    (root / "photos").mkdir()
    (root / "a.png").write_bytes(SMALL)  # beside the image folder, not in it
    settings = ServeSettings(
        model_name=MODEL,
        api_key=KEY,
        max_body_bytes=BODY_LIMIT,
        max_image_bytes=IMAGE_LIMIT,
        max_images=MAX_IMAGES,
        image_folder=root / "photos",
    )
    with BackgroundServer(create_app(*load_chat_model(root / "ckpt"), settings)) as running:
        yield running


def send(server, payload: dict | bytes, headers: dict[str, str | None] | None = None, chunked: bool = False):
    """POST to /v1/chat/completions; (status, headers, body)."""
    data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    sent = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    sent.update(headers or {})
    sent = {name: value for name, value in sent.items() if value is not None}
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        if chunked:
            pieces = (data[start : start + 65536] for start in range(0, len(data), 65536))
            connection.request("POST", "/v1/chat/completions", body=pieces, headers=sent, encode_chunked=True)
        else:
            connection.request("POST", "/v1/chat/completions", body=data, headers=sent)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def answers_a_good_request(server) -> bool:
    status, _, raw = send(server, body(user(image(uri(SMALL)), text("What is it?")), temperature=0))
    return status == 200 and json.loads(raw)["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("bad", BAD, ids=[bad.name for bad in BAD])
def test_a_bad_request_gets_its_4xx_naming_the_problem(server, bad):
    payload = bad.payload() if callable(bad.payload) else bad.payload
    status, headers, raw = send(server, payload, bad.headers, bad.chunked)
    assert status == bad.status, raw[:300]
    assert headers["content-type"] == "application/json"
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for words in bad.said:
        assert words in error["message"], error["message"]
    if bad.param is not None:
        assert error["param"] == bad.param
    expected_type = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    assert error["type"] == expected_type
    assert "Traceback" not in error["message"]
    assert answers_a_good_request(server)


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/v1/chat/completions", 405), ("POST", "/v1/completions", 404)]
)
def test_unknown_routes_and_methods_answer_in_the_same_format(server, method, path, status):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    connection.request(method, path, headers={"Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == status and path in error["message"]


def test_the_server_counted_the_refusals_and_still_answers(server):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    connection.request("GET", "/metrics")
    metrics = connection.getresponse().read().decode()
    for status in (400, 401, 404, 413, 415):
        assert f'llavakit_requests_total{{endpoint="/v1/chat/completions",status="{status}"}}' in metrics
    assert answers_a_good_request(server)
