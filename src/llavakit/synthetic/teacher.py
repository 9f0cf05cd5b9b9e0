"""LLaVA's instruction-data step with a real teacher: any OpenAI-compatible chat endpoint.

Why: `instruct.py` writes instruction data from templates, offline and exact. LLaVA's own
recipe asks a text-only LLM to write it from captions and boxes, which gives varied,
natural wording. This module does that for llavakit's synthetic world, for the three LLaVA
kinds (conversation, detail, reasoning), against OpenAI, vLLM, SGLang, Ollama or any server
that speaks `/v1/chat/completions`, and makes the run safe to repeat:

- retries with exponential backoff on 408/409/429/5xx, timeouts and dropped connections
  (bounded by `max_attempts`; the SDK's own retries are switched off so each attempt is
  counted); 401/403/404 stop the run at once, since every other request would fail too;
- a total deadline per attempt (`timeout`): HTTP clients time each read, so a server that
  trickles a byte a second would hold a request forever; each attempt runs as an asyncio task
  on the client's own event loop and is cancelled (its connection closed) at the deadline;
- an on-disk cache keyed by the SHA-256 of the request body (model, messages, sampling
  settings), so a rerun of the same requests sends nothing (`refresh=True` asks again and
  overwrites the entries: with resume, that retries only the samples not yet written);
- resumable output: one JSONL line per finished sample, appended and flushed at once, in
  the planned order; a rerun skips the ids already there;
- a reply that does not parse is retried once (with the reason sent back to the model);
  if it fails again the sample is counted as failed, listed with its id in the report and
  in `<output stem>_failed.jsonl`, and never written;
- a progress bar and a usage summary: requests, retries, cache hits, prompt and
  completion tokens from the responses' `usage` (a reply whose `usage` is missing or not
  a whole number is counted as one without usage), and a cost when prices are given.

    export OPENAI_API_KEY=...                      # or any key your server accepts
    from llavakit.synthetic.teacher import generate_main
    generate_main("runs/world", None, ["conversation"], limit=10, seed=0,
                  base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")

Needs the OpenAI SDK: `pip install 'llavakit[instruct]'`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llavakit.errors import ConfigError, DataError
from llavakit.synthetic.instruct import DETAIL_INSTRUCTIONS, to_sample
from llavakit.synthetic.prompts import (
    LLM_KINDS,
    build_messages,
    parse_reply,
    retry_messages,
)
from llavakit.synthetic.world import load_scenes

OUTPUT_NAME = "instruct_llm.jsonl"
CACHE_NAME = "llm_cache"
RETRYABLE_STATUS: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUS: frozenset[int] = frozenset({401, 403, 404})
_INSTALL_HINT = "the openai backend needs the OpenAI SDK: pip install 'llavakit[instruct]'"


def import_openai() -> Any:
    """The `openai` module, imported only when an endpoint is used (it is an optional extra)."""
    try:
        import openai
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return openai


@dataclass(frozen=True)
class LLMConfig:
    """Where to send requests and how patiently.

    `base_url` None means `$OPENAI_BASE_URL`, else OpenAI's API. The key is read from the
    environment variable `api_key_env`; a server given by URL may run without one (the SDK
    then sends "EMPTY"). `max_attempts` HTTP attempts per request; attempt k+1 waits
    `base_delay * 2**(k-1)` seconds (at most `max_delay`), or longer if the server sends
    Retry-After. `timeout` bounds each attempt as a whole (connecting, sending, waiting and
    reading the reply). Prices are in currency units per million tokens.
    """

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float | None = None
    max_tokens: int | None = 1024
    timeout: float = 120.0
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_concurrency: int = 4
    prompt_price: float | None = None
    completion_price: float | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("LLMConfig.model is empty: name the model the endpoint serves (--model)")
        limits = {
            "max_attempts": (self.max_attempts, "a whole number >= 1", self.max_attempts >= 1),
            "max_concurrency": (self.max_concurrency, "a whole number >= 1", self.max_concurrency >= 1),
            "base_delay": (self.base_delay, "seconds >= 0", self.base_delay >= 0),
            "max_delay": (self.max_delay, "seconds >= 0", self.max_delay >= 0),
            "timeout": (self.timeout, "a finite number of seconds > 0", 0 < self.timeout < float("inf")),
        }
        for name, (value, wanted, ok) in limits.items():
            if not ok:
                raise ConfigError(f"LLMConfig.{name} (--{name.replace('_', '-')}) must be {wanted}, got {value}")

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The chat-completions request: what the cache key is computed from."""
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body


@dataclass
class Usage:
    """What requests cost; per sample in worker threads, summed in the main thread."""

    requests: int = 0  # HTTP requests sent, failed attempts included
    retries: int = 0  # requests repeated after a 429/5xx/timeout
    backoff_seconds: float = 0.0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt + completion tokens of replies served from the cache
    responses_without_usage: int = 0  # no `usage`, or token counts that are not whole numbers

    def add(self, other: Usage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def cost(self, config: LLMConfig) -> float | None:
        if config.prompt_price is None and config.completion_price is None:
            return None
        return (
            self.prompt_tokens * (config.prompt_price or 0.0)
            + self.completion_tokens * (config.completion_price or 0.0)
        ) / 1e6


@dataclass(frozen=True)
class Reply:
    """What a completion said; fields a server filled with the wrong type become None."""

    content: str | None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("content", "finish_reason"):
            if not isinstance(getattr(self, name), str):
                object.__setattr__(self, name, None)
        for name in ("prompt_tokens", "completion_tokens"):
            object.__setattr__(self, name, _token_count(getattr(self, name)))


def _token_count(value: Any) -> int | None:
    """A usage count as the protocol defines it (a whole number >= 0), or None for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class RequestFailed(Exception):
    """A request that could not be answered (retries spent, or a 4xx that retrying cannot fix)."""

    def __init__(self, reason: str, usage: Usage):
        super().__init__(reason)
        self.usage = usage


def request_key(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request body."""
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseCache:
    """One JSON file per request under `root/<2 hex>/<key>.json`, written atomically.

    Any parsed HTTP response is kept, unusable replies included, so a rerun reproduces a
    run exactly without paying for it. Delete the folder (or one file) to ask again.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Reply | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
            return Reply(**entry["reply"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable: ask again and overwrite it

    def put(self, key: str, body: dict[str, Any], reply: Reply) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"request": body, "reply": asdict(reply)}, ensure_ascii=False, indent=1)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp.write(text + "\n")
        os.replace(tmp.name, path)


class _EventLoop:
    """An asyncio event loop on its own thread: coroutines from any thread run there, each under a
    deadline, and are cancelled (closing their connections) when it passes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llavakit-llm-requests", daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Awaitable[Any]], deadline: float) -> Any:
        """`await make()` on the loop, at most `deadline` seconds; raises TimeoutError after that."""

        async def bounded() -> Any:
            return await asyncio.wait_for(make(), deadline)

        return asyncio.run_coroutine_threadsafe(bounded(), self.loop).result()

    def close(self, make_last: Callable[[], Awaitable[Any]]) -> None:
        """Run `make_last()` (closing the HTTP client), then stop the loop and its thread."""
        try:
            asyncio.run_coroutine_threadsafe(make_last(), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


class ChatClient:
    """Chat completions with caching, a deadline per attempt and bounded exponential backoff; safe to
    share across threads (requests run concurrently on the client's event loop).

    `refresh` skips cache reads (replies are still written), to ask again for what was cached.
    """

    def __init__(self, config: LLMConfig, cache: ResponseCache | None = None, refresh: bool = False):
        openai = import_openai()
        base_url = config.resolved_base_url()
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            if base_url is None:
                raise ConfigError(
                    f"no API key: set ${config.api_key_env}, or give the base URL of a server that needs none"
                )
            api_key = "EMPTY"
        self.config, self.cache, self.base_url, self._openai = config, cache, base_url, openai
        self.refresh = refresh
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=config.timeout)
        self._loop = _EventLoop()

    def close(self) -> None:
        self._loop.close(self._client.close)

    def _create(self, body: dict[str, Any]) -> Any:
        """One HTTP attempt, cancelled when it has not finished within `config.timeout` seconds."""
        return self._loop.run(lambda: self._client.chat.completions.create(**body), self.config.timeout)

    def complete(self, messages: list[dict[str, str]]) -> tuple[Reply, Usage]:
        """The reply to `messages` and what it cost; raises RequestFailed, or RuntimeError on 401/403/404."""
        body = self.config.request_body(messages)
        key = request_key(body)
        usage = Usage()
        cached = self.cache.get(key) if self.cache and not self.refresh else None
        if cached is not None:
            usage.cache_hits = 1
            usage.cached_tokens = (cached.prompt_tokens or 0) + (cached.completion_tokens or 0)
            return cached, usage
        openai = self._openai
        for attempt in range(1, self.config.max_attempts + 1):
            usage.requests += 1
            retry_after = None
            try:
                completion = self._create(body)
            except openai.APIStatusError as error:
                status = error.status_code
                if status in FATAL_STATUS:
                    raise RuntimeError(
                        f"{self.base_url or 'OpenAI API'} refused the request with HTTP {status} "
                        f"(check the key in ${self.config.api_key_env}, the URL and the model "
                        f"{self.config.model!r}): {_short(error)}"
                    ) from error
                if status not in RETRYABLE_STATUS:
                    raise RequestFailed(f"HTTP {status}: {_short(error)}", usage) from error
                problem = f"HTTP {status}"
                retry_after = _retry_after(error.response)
            except (openai.APITimeoutError, TimeoutError):
                problem = f"timeout: no whole reply within {self.config.timeout:g} s"
            except openai.APIConnectionError as error:
                problem = f"connection error ({_short(error)})"
            except (openai.APIResponseValidationError, ValueError) as error:  # a 200 whose body is not JSON
                problem = f"the reply is not a chat completion ({_short(error)})"
            else:
                reply = _reply(completion)
                if reply.prompt_tokens is None and reply.completion_tokens is None:
                    usage.responses_without_usage += 1
                usage.prompt_tokens += reply.prompt_tokens or 0
                usage.completion_tokens += reply.completion_tokens or 0
                if self.cache:
                    self.cache.put(key, body, reply)
                return reply, usage
            if attempt == self.config.max_attempts:
                raise RequestFailed(f"{problem}, gave up after {attempt} attempts", usage)
            delay = min(self.config.max_delay, self.config.base_delay * 2 ** (attempt - 1))
            if retry_after is not None:
                delay = max(delay, min(self.config.max_delay, retry_after))
            usage.retries += 1
            usage.backoff_seconds += delay
            time.sleep(delay)
        raise AssertionError("unreachable")


def _short(error: Exception, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(response: Any) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after")))
    except (AttributeError, TypeError, ValueError):
        return None  # absent, or an HTTP date: the exponential delay is used


def _reply(completion: Any) -> Reply:
    """The reply's text, finish reason and token counts, whatever shape the server gave them
    (the SDK does not validate replies: a field can hold any JSON value)."""
    choices = getattr(completion, "choices", None)
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = getattr(choice, "message", None)
    usage = getattr(completion, "usage", None)
    return Reply(
        getattr(message, "content", None),
        getattr(choice, "finish_reason", None),
        getattr(usage, "prompt_tokens", None),
        getattr(usage, "completion_tokens", None),
    )


# --- samples ------------------------------------------------------------------------------


@dataclass
class SampleResult:
    sample_id: str
    record: dict[str, Any] | None
    error: str | None
    usage: Usage


def _turns(kind: str, reply: Reply) -> list[tuple[str, str]]:
    if reply.finish_reason == "length":
        raise ValueError("the reply was cut off by the token limit")
    return parse_reply(kind, reply.content)


# What the teacher is asked about a subject (a synthetic scene, a COCO image): kind, subject -> messages.
MessageBuilder = Callable[[str, Any], list[dict[str, str]]]


def make_sample(
    chat: ChatClient, scene: Any, kind: str, seed: int, messages_for: MessageBuilder = build_messages
) -> SampleResult:
    """Ask for one (subject, kind) sample; a reply that does not parse is retried once with the reason.

    `scene`: anything with an `id` and an `image` path (a `Scene`, a `CocoImage`); `messages_for`
    writes its request.
    """
    sample_id = f"{scene.id}-{kind}"
    usage = Usage()
    messages = messages_for(kind, scene)
    try:
        reply, spent = chat.complete(messages)
        usage.add(spent)
        try:
            turns = _turns(kind, reply)
        except ValueError as first:
            reply, spent = chat.complete(retry_messages(messages, reply.content or "", str(first)))
            usage.add(spent)
            try:
                turns = _turns(kind, reply)
            except ValueError as second:
                return SampleResult(
                    sample_id, None, f"unusable reply ({first}), and again after a retry ({second})", usage
                )
    except RequestFailed as error:
        usage.add(error.usage)
        return SampleResult(sample_id, None, str(error), usage)
    rng = random.Random(f"llavakit-instruct-llm:{seed}:{scene.id}:{kind}")
    if kind == "detail":
        turns = [(rng.choice(DETAIL_INSTRUCTIONS), turns[0][1])]
    return SampleResult(sample_id, to_sample(sample_id, scene.image, turns, rng), None, usage)


# --- the run ------------------------------------------------------------------------------


@dataclass
class GenerationReport:
    """What a run did; `failed` lists (sample id, reason) for every sample not written."""

    output: Path
    planned: int
    skipped: int = 0
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None

    def summary(self) -> str:
        u = self.usage
        lines = [
            f"{self.output}: {self.written} written, {self.skipped} already there, {len(self.failed)} failed "
            f"(of {self.planned} planned)",
            f"requests: {u.requests} sent ({u.retries} retries, {u.backoff_seconds:.1f} s backoff), "
            f"{u.cache_hits} answered from the cache ({u.cached_tokens} tokens not paid again)",
            f"tokens: {u.prompt_tokens} prompt + {u.completion_tokens} completion = "
            f"{u.prompt_tokens + u.completion_tokens}"
            + (f"; cost {self.cost:.4f}" if self.cost is not None else "; cost: no prices given")
            + (
                f" ({u.responses_without_usage} responses had no usable usage field: their tokens are not counted)"
                if u.responses_without_usage
                else ""
            ),
        ]
        lines += [f"failed {sample_id}: {reason}" for sample_id, reason in self.failed]
        if self.failed:
            lines.append(
                "failed samples are not written: a rerun asks again for those that failed on HTTP "
                "errors; unusable replies come back from the cache unless refresh is asked for (--refresh)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "planned": self.planned,
            "skipped": self.skipped,
            "written": self.written,
            "failed": [{"id": i, "reason": r} for i, r in self.failed],
            "usage": asdict(self.usage),
            "cost": self.cost,
        }


def done_ids(path: Path) -> set[str]:
    """Ids already in an output file. A last line cut off mid-write is removed; any other
    unreadable line raises `DataError` naming the file and line."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as handle:
            handle.truncate(len(data))
    ids = set()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 ({error.reason} at byte {error.start}); fix or move it") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError, RecursionError) as error:
            raise DataError(f"{path}:{number}: not a sample record ({error!r}); fix or remove the line") from error
    return ids


def generate(
    scenes: Sequence[Any],
    output: str | Path,
    config: LLMConfig,
    kinds: Sequence[str] = LLM_KINDS,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    refresh: bool = False,
    progress: bool | None = None,
    messages_for: MessageBuilder = build_messages,
) -> GenerationReport:
    """Write one sample per (scene, kind) not yet in `output` (JSONL); see the module docstring.

    `scenes`: synthetic scenes, or any subjects with distinct `id`s and `image` paths that
    `messages_for` turns into requests (`llavakit.synthetic.coco`).

    `cache_dir` defaults to `llm_cache/` next to the output; `use_cache` False neither reads
    nor writes it, `refresh` True only skips reading it. `progress` None shows the bar only
    on a terminal. Also writes `<stem>_failed.jsonl` and `<stem>_report.json`.
    """
    kinds = list(kinds) or list(LLM_KINDS)
    unknown = [k for k in kinds if k not in LLM_KINDS]
    if unknown:
        raise ConfigError(f"unknown instruction kinds {unknown} for an LLM teacher; known: {list(LLM_KINDS)}")
    ids = [scene.id for scene in scenes]
    if len(set(ids)) != len(ids) or not all(ids) or not all(scene.image for scene in scenes):
        raise DataError("scenes need distinct, non-empty ids and image paths (build them with synth.generate_world)")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(output)
    plan = [(scene, kind) for scene in scenes for kind in kinds]
    todo = [(scene, kind) for scene, kind in plan if f"{scene.id}-{kind}" not in done]
    report = GenerationReport(output, len(plan), skipped=len(plan) - len(todo))
    cache = ResponseCache(cache_dir if cache_dir is not None else output.parent / CACHE_NAME) if use_cache else None
    chat = ChatClient(config, cache, refresh) if todo else None
    try:
        if chat is not None:
            _run(chat, todo, output, seed, report, progress, messages_for)
    finally:
        if chat is not None:
            chat.close()
        report.cost = report.usage.cost(config)
        stem = output.with_suffix("")
        with open(f"{stem}_failed.jsonl", "w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(json.dumps({"id": i, "reason": r}) + "\n" for i, r in report.failed)
        Path(f"{stem}_report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return report


def _run(
    chat: ChatClient,
    todo: list[tuple[Any, str]],
    output: Path,
    seed: int,
    report: GenerationReport,
    progress: bool | None,
    messages_for: MessageBuilder = build_messages,
) -> None:
    """Requests run concurrently; results are written in plan order as soon as they can be."""
    ready: dict[int, SampleResult] = {}
    next_index = 0
    with (
        ThreadPoolExecutor(max_workers=chat.config.max_concurrency) as pool,
        open(output, "a", encoding="utf-8", newline="\n") as handle,
        tqdm(
            total=len(todo),
            desc="instruct",
            unit="sample",
            disable=None if progress is None else not progress,
            file=sys.stderr,
        ) as bar,
    ):
        futures = {
            pool.submit(make_sample, chat, scene, kind, seed, messages_for): n for n, (scene, kind) in enumerate(todo)
        }
        try:
            for future in as_completed(futures):
                ready[futures[future]] = future.result()
                bar.update(1)
                while next_index in ready:
                    result = ready.pop(next_index)
                    next_index += 1
                    report.usage.add(result.usage)
                    if result.record is None:
                        report.failed.append((result.sample_id, result.error or "unknown error"))
                        continue
                    handle.write(json.dumps(result.record, ensure_ascii=False) + "\n")
                    handle.flush()
                    report.written += 1
                bar.set_postfix(
                    tokens=report.usage.prompt_tokens + report.usage.completion_tokens,
                    failed=len(report.failed),
                    refresh=False,
                )
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def generate_main(
    world_dir: str,
    out_dir: str | None,
    kinds: list[str],
    limit: int | None,
    seed: int,
    base_url: str | None,
    model: str | None,
    api_key_env: str = "OPENAI_API_KEY",
    max_concurrency: int = 4,
    *,
    temperature: float | None = None,
    max_tokens: int | None = 1024,
    prompt_price: float | None = None,
    completion_price: float | None = None,
    max_attempts: int = 5,
    base_delay: float = 1.0,
    timeout: float = 120.0,
    cache_dir: str | None = None,
    refresh: bool = False,
) -> int:
    """`llavakit data instruct WORLD --backend openai`: samples for the first `limit` training
    scenes into `<out_dir or WORLD>/instruct_llm.jsonl`; prints the summary.

    `model` None means `$OPENAI_MODEL`. Returns 0 when every planned sample is in the
    output, 1 when some failed (they are listed; rerun, with `refresh` for unusable
    replies, to try them again). The keyword-only options are `LLMConfig` fields, plus
    `cache_dir` and `refresh` (see `generate`).
    """
    model = model or os.environ.get("OPENAI_MODEL")
    if not model:
        raise ConfigError("no model given: pass --model (or set $OPENAI_MODEL) to the name the endpoint serves")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    world = Path(world_dir)
    scenes_path = world / "scenes_train.jsonl"
    if not scenes_path.is_file():
        raise DataError(f"{scenes_path} does not exist: make the world with `llavakit data synth` first")
    scenes = load_scenes(scenes_path)[:limit]
    config = LLMConfig(
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        max_attempts=max_attempts,
        base_delay=base_delay,
        max_concurrency=max_concurrency,
        prompt_price=prompt_price,
        completion_price=completion_price,
    )
    output = Path(out_dir if out_dir is not None else world) / OUTPUT_NAME
    report = generate(scenes, output, config, kinds or LLM_KINDS, seed, cache_dir, refresh=refresh)
    print(report.summary())
    if Path(out_dir or world).resolve() != world.resolve():
        print(f"image paths are relative to {world}: use it as the image folder")
    return 1 if report.failed else 0


__all__ = [
    "LLMConfig",
    "ChatClient",
    "GenerationReport",
    "ResponseCache",
    "Usage",
    "done_ids",
    "generate",
    "generate_main",
    "import_openai",
    "make_sample",
    "request_key",
]
