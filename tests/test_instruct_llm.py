"""Instruction data from an OpenAI-compatible endpoint, against a local stub server.

The stub (stdlib http.server on 127.0.0.1, port 0) answers /v1/chat/completions from the
request alone: it finds the scene by its context text, then follows a per-(scene, kind)
rule (a 500 or 429 first, an unusable reply, ...). It counts every hit and the usage it
reports, so the tests can compare the generator's numbers with the server's.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("openai")

from llavakit.cli import main
from llavakit.data.check import check_data
from llavakit.data.records import DatasetSpec
from llavakit.synthetic.instruct import DETAIL_INSTRUCTIONS
from llavakit.synthetic.prompts import (
    EXAMPLE_REPLIES,
    EXAMPLE_SCENES,
    LLM_KINDS,
    RETRY_MESSAGE,
    SYSTEM_PROMPTS,
    build_context,
    build_messages,
    parse_reply,
    prompts_markdown,
)
from llavakit.synthetic.teacher import (
    LLMConfig,
    ResponseCache,
    done_ids,
    generate,
    generate_main,
    import_openai,
    request_key,
)
from llavakit.synthetic.world import caption, describe, load_scenes, write_world

DOC = Path(__file__).resolve().parents[1] / "docs" / "instruct.md"
BASE_DELAY = 0.01
# How long a `slow_once` reply waits for the client's retry before answering after all.
HOLD_SECONDS = 30.0
# A `trickle` reply sends its body one byte at a time, this far apart (a whole reply takes minutes).
TRICKLE_SECONDS = 0.2
# `usage` fields of servers that break the protocol, by rule.
UNUSUAL_USAGE = {
    "usage_not_numbers": {"prompt_tokens": "many", "completion_tokens": 1.5, "total_tokens": None},
    "usage_text": "lots",
    "usage_negative": {"prompt_tokens": -3, "completion_tokens": True},
}


class Stub:
    """Deterministic chat-completions server; `rules[(scene_id, kind)]` picks a behaviour."""

    def __init__(self, scenes, rules=None):
        self.by_context = {build_context(s): s for s in scenes}
        self.rules = dict(rules or {})
        self.hits: Counter = Counter()  # (scene id, kind) -> requests
        self.retry_hits: Counter = Counter()  # requests that carried the retry message
        self.prompt_tokens = self.completion_tokens = 0
        self.auth_headers: set[str] = set()
        self.retry_arrived = threading.Event()  # `slow_once`: a second request came for the held one
        self.late_replies = 0  # held replies released by that second request: the client had given up
        self.trickling = 0  # `trickle` replies started
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def good_reply(self, scene, kind: str) -> str:
        if kind == "detail":
            return describe(scene)
        if kind == "reasoning":
            return f"Question:\nWhat is in the picture?\nAnswer:\nI see {caption(scene)}, so the answer follows."
        return (
            f"Question:\nWhat can you see?\nAnswer:\nI can see {caption(scene)}.\n"
            f"**Question:** What is the background like?\n**Answer:** It is {scene.background}."
        )

    def respond(self, body: dict, auth: str) -> tuple[int, dict, dict]:
        messages = body["messages"]
        kind = next(k for k, prompt in SYSTEM_PROMPTS.items() if messages[0]["content"] == prompt)
        is_retry = messages[-1]["content"].startswith(RETRY_MESSAGE.split("{")[0])
        scene = self.by_context[messages[-3]["content"] if is_retry else messages[-1]["content"]]
        key = (scene.id, kind)
        with self.lock:
            self.hits[key] += 1
            self.retry_hits[key] += is_retry
            self.auth_headers.add(auth)
            n = self.hits[key]
        rule = self.rules.get(key)
        if rule == "fail_once" and n == 1:
            return 500, {}, {"error": {"message": "server hiccup"}}
        if rule == "slow_once" and n > 1:
            self.retry_arrived.set()
        if rule == "slow_once" and n == 1 and self.retry_arrived.wait(HOLD_SECONDS):
            with self.lock:
                self.late_replies += 1
            return 500, {}, {"error": {"message": "too late"}}  # the client has given up: no usage is counted
        if rule == "rate_limit_once" and n == 1:
            return 429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}
        if rule == "always_500":
            return 500, {}, {"error": {"message": "down"}}
        if rule == "unauthorized":
            return 401, {}, {"error": {"message": "bad key"}}
        if rule == "not_json":
            return 200, {"X-Raw": "1"}, {"raw": "<html>busy, try later</html>"}
        if rule == "always_malformed" or (rule == "malformed_once" and not is_retry):
            content = "Sure! Here is a conversation about the caption you gave me."
        else:
            content = self.good_reply(scene, kind)
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        completion_tokens = len(content.split())
        with self.lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        payload = {
            "id": f"cmpl-{scene.id}-{kind}-{n}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": UNUSUAL_USAGE.get(rule, usage),
        }
        return 200, {"X-Trickle": "1"} if rule == "trickle" else {}, payload

    def trickle(self, stream, data: bytes) -> None:
        """Send `data` one byte per TRICKLE_SECONDS: every read gets something, so no read times out."""
        with self.lock:
            self.trickling += 1
        for byte in data:
            stream.write(bytes([byte]))
            stream.flush()
            time.sleep(TRICKLE_SECONDS)

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                assert self.path == "/v1/chat/completions", self.path
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers, payload = stub.respond(body, self.headers.get("Authorization", ""))
                data = payload["raw"].encode() if "X-Raw" in headers else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if "X-Trickle" in headers:
                        stub.trickle(self.wfile, data)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and closed the connection

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(root, n=8, seed=3, test_fraction=0.25)
    return root


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def _config(stub: Stub, **overrides) -> LLMConfig:
    options = {
        "model": "teacher",
        "base_url": stub.url,
        "base_delay": BASE_DELAY,
        "max_attempts": 3,
        "max_concurrency": 3,
        "timeout": 10.0,
    }
    options.update(overrides)
    return LLMConfig(**options)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- prompts and parsing ------------------------------------------------------------------


def test_few_shot_examples_parse_and_messages_alternate():
    for kind in LLM_KINDS:
        for reply in EXAMPLE_REPLIES[kind]:
            turns = parse_reply(kind, reply)
            assert turns and all(answer for _, answer in turns)
        messages = build_messages(kind, EXAMPLE_SCENES[1])
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
        assert messages[0]["content"] == SYSTEM_PROMPTS[kind]
        assert messages[2]["content"] == EXAMPLE_REPLIES[kind][0]
    assert len(parse_reply("conversation", EXAMPLE_REPLIES["conversation"][0])) == 4
    # the context lists every object with LLaVA-style normalized boxes, back to front
    context = build_context(EXAMPLE_SCENES[1])
    assert "medium green diamond: [0.22, 0.28, 0.45, 0.52]\nlarge purple circle: [0.34, 0.34, 0.64, 0.64]" in context
    assert "The large purple circle overlaps the medium green diamond and is in front of it." in context
    assert 'word "SUN" (black text): [0.09, 0.78, 0.38, 0.88]' in build_context(EXAMPLE_SCENES[0])


def test_parse_reply_accepts_variants_and_names_what_is_wrong():
    assert parse_reply("reasoning", "**Question:** Why?\n**Answer:** Because\nit is.") == [("Why?", "Because\nit is.")]
    assert parse_reply("detail", "  A red circle.\n") == [("", "A red circle.")]
    bad = {
        ("conversation", "Sure!\nQuestion: a?\nAnswer: b.\nQuestion: c?\nAnswer: d."): "text before",
        ("conversation", "Question: a?\nAnswer: b."): "1 Question/Answer pairs",
        ("conversation", "Question: a?\nQuestion: b?\nAnswer: c.\nAnswer: d."): "alternate",
        ("reasoning", "Question: a?\nAnswer: b.\nQuestion: c?\nAnswer: d."): "2 Question/Answer pairs",
        ("reasoning", "Question: a?\nAnswer:"): "empty Answer",
        ("reasoning", "Question: what?\nAnswer: The caption says a circle."): "'caption'",
        ("detail", "Question: a?\nAnswer: b."): "must not contain",
        ("detail", "<image> shows a circle"): "'<image>'",
        ("detail", "   "): "empty",
        ("reasoning", "Just a sentence."): "no 'Question:'",
    }
    for (kind, reply), reason in bad.items():
        with pytest.raises(ValueError, match=reason.replace("?", r"\?").replace("(", r"\(")):
            parse_reply(kind, reply)


def test_doc_shows_the_prompts_exactly():
    text = DOC.read_text(encoding="utf-8")
    assert prompts_markdown() in text
    for kind in LLM_KINDS:  # the block really holds them (guards against an empty render)
        assert SYSTEM_PROMPTS[kind] in text and all(reply in text for reply in EXAMPLE_REPLIES[kind])
    assert "--backend openai" in text


# --- the generator against the stub ------------------------------------------------------


def test_generate_retries_caches_resumes_and_reports(world, tmp_path):
    scenes = load_scenes(world / "scenes_train.jsonl")
    assert len(scenes) == 6
    flaky, limited, broken, fixed = (
        (scenes[1].id, "conversation"),
        (scenes[2].id, "reasoning"),
        (scenes[3].id, "detail"),
        (scenes[4].id, "conversation"),
    )
    rules = {flaky: "fail_once", limited: "rate_limit_once", broken: "always_malformed", fixed: "malformed_once"}
    out = tmp_path / "instruct_llm.jsonl"
    with Stub(scenes, rules) as stub:
        config = _config(stub, prompt_price=2.0, completion_price=8.0)
        report = generate(scenes, out, config, LLM_KINDS, seed=0, cache_dir=tmp_path / "cache")

        planned = len(scenes) * 3
        assert report.planned == planned and report.written == planned - 1 and report.skipped == 0
        assert report.failed == [(f"{broken[0]}-detail", report.failed[0][1])]
        assert "unusable reply" in report.failed[0][1] and "'caption'" in report.failed[0][1]
        # every sample once, plus: one retry after the 500, one after the 429, the unusable reply asked
        # again once for each of the two malformed rules
        assert stub.hits[flaky] == 2 and stub.hits[limited] == 2
        assert stub.hits[broken] == 2 and stub.retry_hits[broken] == 1
        assert stub.hits[fixed] == 2 and stub.retry_hits[fixed] == 1
        assert stub.total_hits == planned + 4
        assert report.usage.requests == stub.total_hits and report.usage.retries == 2
        assert report.usage.backoff_seconds == pytest.approx(2 * BASE_DELAY)  # first delay, Retry-After: 0
        assert report.usage.prompt_tokens == stub.prompt_tokens
        assert report.usage.completion_tokens == stub.completion_tokens
        assert report.cost == pytest.approx((2.0 * stub.prompt_tokens + 8.0 * stub.completion_tokens) / 1e6)
        assert stub.auth_headers == {"Bearer sk-test"}

        records = _lines(out)
        assert [r["id"] for r in records] == [
            f"{s.id}-{k}" for s in scenes for k in LLM_KINDS if (s.id, k) != broken
        ]  # plan order despite concurrency
        check = check_data([DatasetSpec(out, image_folder=world)], None, None)
        assert check.bad_samples == [] and check.num_good == planned - 1 and check.num_images == planned - 1
        by_id = {r["id"]: r for r in records}
        detail = by_id[f"{scenes[0].id}-detail"]["conversations"]
        assert detail[1] == {"from": "gpt", "value": describe(scenes[0])}
        assert detail[0]["value"].replace("<image>", "").strip() in DETAIL_INSTRUCTIONS
        conversation = by_id[f"{fixed[0]}-conversation"]["conversations"]
        assert [t["from"] for t in conversation] == ["human", "gpt"] * 2
        assert conversation[0]["value"].replace("<image>", "").strip() == "What can you see?"
        assert conversation[3]["value"] == f"It is {scenes[4].background}."
        assert _lines(tmp_path / "instruct_llm_failed.jsonl") == [
            {"id": f"{broken[0]}-detail", "reason": report.failed[0][1]}
        ]

        # rerun: nothing new is asked (the failed sample is answered from the cache, and fails again)
        before, text = stub.total_hits, out.read_text()
        again = generate(scenes, out, config, LLM_KINDS, seed=0, cache_dir=tmp_path / "cache")
        assert stub.total_hits == before and out.read_text() == text
        assert again.skipped == planned - 1 and again.written == 0 and again.failed == report.failed
        assert again.usage.requests == 0 and again.usage.prompt_tokens == 0 and again.cost == 0.0
        assert again.usage.cache_hits == 2
        assert "--refresh" in again.summary()

        # refresh: the server is fixed; only the failed sample is asked again (written ones are skipped)
        del stub.rules[broken]
        fresh = generate(scenes, out, config, LLM_KINDS, seed=0, cache_dir=tmp_path / "cache", refresh=True)
        assert stub.total_hits == before + 1 and stub.hits[broken] == 3 and stub.retry_hits[broken] == 1
        assert fresh.written == 1 and fresh.failed == [] and fresh.usage.cache_hits == 0
        assert [r["id"] for r in _lines(out)] == [r["id"] for r in records] + [f"{broken[0]}-detail"]
        assert _lines(out)[-1]["conversations"][1]["value"] == describe(scenes[3])
        assert (tmp_path / "instruct_llm_failed.jsonl").read_text() == ""


def test_resume_skips_done_ids_without_a_cache(world, tmp_path):
    scenes = load_scenes(world / "scenes_train.jsonl")
    out = tmp_path / "instruct_llm.jsonl"
    with Stub(scenes) as stub:
        first = generate(scenes[:2], out, _config(stub), ["conversation", "detail"], use_cache=False)
        assert first.written == 4 and stub.total_hits == 4
        # a crash mid-write leaves half a line: it is dropped and that sample asked again
        with open(out, "a") as handle:
            handle.write('{"id": "half')
        second = generate(scenes[:3], out, _config(stub), ["conversation", "detail"], use_cache=False)
        assert second.skipped == 4 and second.written == 2 and stub.total_hits == 6
    ids = [r["id"] for r in _lines(out)]
    assert len(ids) == len(set(ids)) == 6 and done_ids(out) == set(ids)
    out.write_text(out.read_text() + "not json\n")
    with pytest.raises(ValueError, match=r"instruct_llm.jsonl:7"):
        done_ids(out)


def test_backoff_is_bounded_and_auth_errors_stop_the_run(world, tmp_path):
    scenes = load_scenes(world / "scenes_train.jsonl")[:1]
    with Stub(scenes, {(scenes[0].id, "reasoning"): "always_500"}) as stub:
        report = generate(scenes, tmp_path / "a.jsonl", _config(stub, max_attempts=3), ["reasoning"])
        assert stub.total_hits == 3 and report.written == 0
        assert report.failed == [(f"{scenes[0].id}-reasoning", "HTTP 500, gave up after 3 attempts")]
        assert report.usage.backoff_seconds == pytest.approx(BASE_DELAY + 2 * BASE_DELAY)
        assert not list((tmp_path / "llm_cache").rglob("*.json"))  # failures are not cached
    with Stub(scenes, {(scenes[0].id, "detail"): "unauthorized"}) as stub:
        with pytest.raises(RuntimeError, match="HTTP 401"):
            generate(scenes, tmp_path / "b.jsonl", _config(stub), ["detail"])
        assert stub.total_hits == 1


def test_timeouts_are_retried(world, tmp_path):
    scenes = load_scenes(world / "scenes_train.jsonl")[:1]
    key = (scenes[0].id, "conversation")
    with Stub(scenes, {key: "slow_once"}) as stub:
        report = generate(scenes, tmp_path / "t.jsonl", _config(stub, timeout=0.5), ["conversation"])
        # the first reply was held until the second request came: the client gave up on it and asked again
        # (a client that waited would have had it, good, after HOLD_SECONDS, and asked once)
        assert stub.late_replies == 1
        assert stub.hits[key] == 2 and report.written == 1 and report.failed == []
        assert report.usage.requests == 2 and report.usage.retries == 1
        assert report.usage.prompt_tokens == stub.prompt_tokens > 0  # only the answered request counts


def test_a_trickling_reply_is_cut_at_the_deadline(world, tmp_path):
    """A server that sends one byte every 0.2 s never trips a per-read timeout; the deadline per attempt
    (timeout=0.5 s) cuts each attempt, so two attempts end in about a second instead of minutes."""
    scenes = load_scenes(world / "scenes_train.jsonl")[:1]
    with Stub(scenes, {(scenes[0].id, "detail"): "trickle"}) as stub:
        start = time.monotonic()
        report = generate(scenes, tmp_path / "t.jsonl", _config(stub, timeout=0.5, max_attempts=2), ["detail"])
        elapsed = time.monotonic() - start
    assert stub.trickling == 2 and report.written == 0
    assert report.failed == [
        (f"{scenes[0].id}-detail", "timeout: no whole reply within 0.5 s, gave up after 2 attempts")
    ]
    assert report.usage.requests == 2 and report.usage.retries == 1
    assert elapsed < 8.0, elapsed


@pytest.mark.parametrize("rule", sorted(UNUSUAL_USAGE))
def test_a_usage_field_that_is_not_whole_numbers_is_counted_as_missing(world, tmp_path, rule):
    scenes = load_scenes(world / "scenes_train.jsonl")[:2]
    with Stub(scenes, {(scenes[0].id, "detail"): rule}) as stub:
        report = generate(scenes, tmp_path / "u.jsonl", _config(stub), ["detail"], cache_dir=tmp_path / "cache")
        assert report.written == 2 and report.failed == []
        assert report.usage.responses_without_usage == 1
        # only the well-formed reply's counts are added (a negative count or a boolean is no count either)
        assert 0 < report.usage.prompt_tokens < stub.prompt_tokens and report.usage.completion_tokens > 0
        assert "1 responses had no usable usage field" in report.summary()
        again = generate(scenes, tmp_path / "u2.jsonl", _config(stub), ["detail"], cache_dir=tmp_path / "cache")
        assert again.usage.cache_hits == 2 and again.written == 2  # the cached reply reads back as well


def test_a_reply_that_is_not_json_fails_the_sample_by_name(world, tmp_path):
    scenes = load_scenes(world / "scenes_train.jsonl")[:2]
    with Stub(scenes, {(scenes[0].id, "detail"): "not_json"}) as stub:
        report = generate(scenes, tmp_path / "n.jsonl", _config(stub, max_attempts=2), ["detail"])
        assert stub.hits[(scenes[0].id, "detail")] == 2 and report.written == 1
    (sample_id, reason), *_ = report.failed
    assert sample_id == f"{scenes[0].id}-detail" and reason.startswith("the reply is not a chat completion")


def test_generate_main_reads_the_environment_and_returns_status(world, tmp_path, monkeypatch, capsys):
    scenes = load_scenes(world / "scenes_train.jsonl")
    monkeypatch.setenv("TEACHER_KEY", "sk-other")
    monkeypatch.setenv("OPENAI_MODEL", "teacher-from-env")
    with Stub(scenes, {(scenes[1].id, "detail"): "always_malformed"}) as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.url)
        status = generate_main(
            str(world),
            str(tmp_path),
            ["detail"],
            limit=2,
            seed=0,
            base_url=None,
            model=None,
            api_key_env="TEACHER_KEY",
            max_concurrency=2,
            base_delay=BASE_DELAY,
        )
        assert status == 1 and stub.total_hits == 3 and stub.auth_headers == {"Bearer sk-other"}
        printed = capsys.readouterr().out
        assert f"failed {scenes[1].id}-detail: unusable reply" in printed and "1 written" in printed
        assert f"image paths are relative to {world}" in printed
        key = request_key(LLMConfig("teacher-from-env").request_body(build_messages("detail", scenes[0])))
        assert ResponseCache(tmp_path / "llm_cache").get(key).content == describe(scenes[0])
        report = json.loads((tmp_path / "instruct_llm_report.json").read_text())
        assert report["usage"]["prompt_tokens"] == stub.prompt_tokens and report["cost"] is None
    with pytest.raises(ValueError, match="no model"):
        monkeypatch.delenv("OPENAI_MODEL")
        generate_main(str(world), None, ["detail"], 1, 0, None, None)


def test_missing_sdk_and_bad_input_give_clear_errors(monkeypatch, tmp_path):
    assert import_openai().__name__ == "openai"
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r"pip install 'llavakit\[instruct\]'"):
        import_openai()
    with pytest.raises(ValueError, match="unknown instruction kinds"):
        generate(list(EXAMPLE_SCENES), tmp_path / "x.jsonl", LLMConfig("m"), ["pope"])
    with pytest.raises(ValueError, match="model"):
        LLMConfig("")


# --- the command --------------------------------------------------------------------------


def test_cli_openai_backend_writes_checked_data_and_reruns_for_free(world, tmp_path, capsys):
    scenes = load_scenes(world / "scenes_train.jsonl")
    out = tmp_path / "out"
    argv = [
        "data",
        "instruct",
        str(world),
        "--backend",
        "openai",
        "--output",
        str(out),
        "--kinds",
        "conversation",
        "reasoning",
        "--limit",
        "2",
        "--max-concurrency",
        "2",
        "--base-delay",
        str(BASE_DELAY),
        "--prompt-price",
        "1",
        "--completion-price",
        "2",
    ]
    with Stub(scenes, {(scenes[1].id, "conversation"): "fail_once"}) as stub:
        assert main(argv + ["--base-url", stub.url, "--model", "teacher"]) == 0
        assert stub.total_hits == 5 and stub.hits[(scenes[2].id, "conversation")] == 0
        printed = capsys.readouterr().out
        assert "4 written, 0 already there, 0 failed (of 4 planned)" in printed
        assert f"cost {(stub.prompt_tokens + 2 * stub.completion_tokens) / 1e6:.4f}" in printed
        records = _lines(out / "instruct_llm.jsonl")
        assert [r["id"] for r in records] == [f"{s.id}-{k}" for s in scenes[:2] for k in ("conversation", "reasoning")]
        assert main(["data", "check", str(out / "instruct_llm.jsonl"), "--image-folder", str(world)]) == 0

        assert main(argv + ["--base-url", stub.url, "--model", "teacher"]) == 0  # rerun: nothing asked
        assert stub.total_hits == 5 and "0 written, 4 already there" in capsys.readouterr().out
        assert len(_lines(out / "instruct_llm.jsonl")) == 4

        stub.rules[(scenes[0].id, "detail")] = "unauthorized"
        refused = [
            "data",
            "instruct",
            str(world),
            "--backend",
            "openai",
            "--output",
            str(out),
            "--kinds",
            "detail",
            "--limit",
            "1",
            "--base-url",
            stub.url,
            "--model",
            "teacher",
        ]
        assert main(refused) == 2
        assert "HTTP 401" in capsys.readouterr().err


def test_cli_offline_backend_stays_the_default_and_rejects_teacher_flags(world, tmp_path, capsys):
    assert main(["data", "instruct", str(world), "--output", str(tmp_path), "--model", "teacher", "--limit", "1"]) == 2
    assert "--model, --limit: only for --backend openai" in capsys.readouterr().err
    assert main(["data", "instruct", str(world), "--output", str(tmp_path)]) == 0
    assert (tmp_path / "instruct.json").is_file() and not (tmp_path / "instruct_llm.jsonl").exists()
