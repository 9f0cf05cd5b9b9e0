"""The HTTP app: OpenAI's chat completions, the model list, health, metrics and the chat page.

`create_app(model, processor, settings)` builds a new FastAPI app around one loaded model;
nothing lives at module level, so tests and benchmarks build as many as they need. A request
goes: API key -> body (size-limited) -> JSON -> strict schema -> prompt and images (in a
worker thread) -> the batching engine -> a JSON answer or server-sent events. Every refusal
is an `APIError` and leaves as OpenAI's error JSON with its status; an unexpected failure is
logged here and answered as a plain 500, never as a traceback.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.serve import openai_format as oai
from llavakit.serve.api_errors import APIError, error_body
from llavakit.serve.engine import BatchingEngine, GenerationEvent, QueueFull, Submission
from llavakit.serve.metrics import CountRequests, ServerMetrics
from llavakit.serve.prompts import PreparedPrompt, PromptBuilder
from llavakit.serve.settings import ServeSettings

logger = logging.getLogger(__name__)
JSON_TYPES = ("application/json", "")
# How often a non-streaming request checks that its client is still connected.
_DISCONNECT_POLL_SECONDS = 1.0


def context_length(model: LlavaKitForCausalLM, settings: ServeSettings) -> int:
    """Tokens the model can attend to: the setting, else its language model's `max_position_embeddings`."""
    if settings.max_context is not None:
        return settings.max_context
    return int(model.config.text_config.max_position_embeddings)


def page_html() -> str:
    """The chat page shipped with the package (static HTML and JavaScript, no build step)."""
    return (resources.files("llavakit.serve") / "static" / "index.html").read_text(encoding="utf-8")


@dataclass
class ServerState:
    """What one app holds: its settings, the engine that runs its model, its prompt builder and counters."""

    settings: ServeSettings
    engine: BatchingEngine
    prompts: PromptBuilder
    metrics: ServerMetrics
    created: int

    def check_api_key(self, request: Request) -> None:
        """401 unless the request carries this server's key as `Authorization: Bearer KEY` (when it has one)."""
        expected = self.settings.api_key
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not key.strip():
            raise APIError(
                401,
                "Missing API key: send it in the header 'Authorization: Bearer YOUR_KEY'",
                code="missing_api_key",
            )
        if not hmac.compare_digest(key.strip().encode(), expected.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")

    async def read_body(self, request: Request) -> bytes:
        """The request body, refused (413) as soon as it passes `max_body_bytes`, declared or streamed."""
        limit = self.settings.max_body_bytes
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES:
            raise APIError(415, f"Content-Type must be application/json, got {content_type!r}", code="invalid_type")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise APIError(413, f"the request body is over the limit of {limit} bytes", code="body_too_large")
        chunks, size = [], 0
        async for piece in request.stream():
            size += len(piece)
            if size > limit:
                raise APIError(413, f"the request body is over the limit of {limit} bytes", code="body_too_large")
            chunks.append(piece)
        return b"".join(chunks)

    async def prepare(self, request: Request) -> tuple[oai.ChatCompletionRequest, PreparedPrompt]:
        """A chat request read and checked, its prompt and images prepared (in a worker thread)."""
        self.check_api_key(request)
        parsed = oai.parse_chat_request(oai.parse_json(await self.read_body(request)))
        if parsed.model != self.settings.model_name:
            raise APIError(
                404,
                f"The model {parsed.model!r} does not exist on this server; it serves {self.settings.model_name!r}",
                param="model",
                code="model_not_found",
            )
        self.check_room()
        return parsed, await run_in_threadpool(self.prompts.prepare, parsed)

    def check_room(self) -> None:
        if not self.engine.has_room():
            raise self.busy(f"{self.engine.waiting} requests are waiting (the limit is {self.settings.max_queue})")

    def busy(self, why: str) -> APIError:
        seconds = self.settings.retry_after_seconds
        return APIError(
            503,
            f"The server is busy: {why}; retry after {seconds} s",
            code="queue_full",
            headers={"Retry-After": str(seconds)},
        )

    def submit(self, prepared: PreparedPrompt, arrived: float) -> Pending:
        """Queue the request (which arrived at `arrived`, `time.perf_counter`) for generation; its events
        arrive on `Pending.events`, in this loop."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        submission = Submission(
            prepared.inputs,
            prepared.prompt_tokens,
            prepared.params,
            on_event=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
            arrived=arrived,
        )
        try:
            self.engine.submit(submission)
        except QueueFull as full:
            raise self.busy(str(full)) from None
        return Pending(submission, events)


@dataclass
class Pending:
    """A request handed to the engine: its events as they come, and the flag that cancels it."""

    submission: Submission
    events: asyncio.Queue[GenerationEvent]

    def cancel(self) -> None:
        """Stop generating for it (nothing happens to a request that already finished)."""
        self.submission.cancelled.set()


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _answer(state: ServerState, request: Request, prepared: PreparedPrompt, pending: Pending) -> JSONResponse:
    """Wait for the whole answer (`stream: false`); a client that leaves cancels its generation."""
    pieces = []
    try:
        while True:
            try:
                event = await asyncio.wait_for(pending.events.get(), _DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return JSONResponse(error_body("client disconnected", "invalid_request_error"), status_code=499)
                continue
            if event.error is not None:
                raise APIError(500, event.error, code="generation_failed")
            pieces.append(event.text)
            if event.finish_reason is not None:
                break
    finally:
        pending.cancel()
    body = oai.chat_completion(
        oai.completion_id(),
        oai.now(),
        state.settings.model_name,
        "".join(pieces),
        event.finish_reason,
        prepared.prompt_tokens,
        event.completion_tokens,
    )
    return JSONResponse(body)


async def _stream(
    state: ServerState, parsed: oai.ChatCompletionRequest, prepared: PreparedPrompt, pending: Pending
) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    id_, created, model = oai.completion_id(), oai.now(), state.settings.model_name
    include_usage = parsed.stream_options is not None and parsed.stream_options.include_usage
    try:
        yield oai.server_sent_event(oai.chunk(id_, created, model, {"role": "assistant", "content": ""}))
        while True:
            event = await pending.events.get()
            if event.error is not None:
                yield oai.server_sent_event(error_body(event.error, "server_error", code="generation_failed"))
                break
            if event.text:
                yield oai.server_sent_event(oai.chunk(id_, created, model, {"content": event.text}))
            if event.finish_reason is not None:
                yield oai.server_sent_event(oai.chunk(id_, created, model, {}, event.finish_reason))
                if include_usage:
                    counts = oai.usage(prepared.prompt_tokens, event.completion_tokens)
                    yield oai.server_sent_event(oai.chunk(id_, created, model, usage_counts=counts))
                break
        yield oai.server_sent_event("[DONE]")
    finally:
        pending.cancel()  # when the client left early: stop generating for it


def _routes(app: FastAPI, state: ServerState) -> None:
    page = page_html()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = state.metrics.render(state.engine.waiting, state.engine.running)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        state.check_api_key(request)
        return oai.model_list(state.settings.model_name, state.created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrived = time.perf_counter()
        parsed, prepared = await state.prepare(request)
        pending = state.submit(prepared, arrived)  # before any byte is sent, so that a full queue is still a 503
        if parsed.stream:
            return StreamingResponse(_stream(state, parsed, prepared, pending), media_type="text/event-stream")
        return await _answer(state, request, prepared, pending)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return _error_response(APIError(error.status_code, message, headers=dict(error.headers or {})))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(APIError(500, "internal server error (logged on the server)", code="internal_error"))


def _pad_token_id(processor: LlavaKitProcessor) -> int:
    """The id that pads prompts prefilled together (masked, so any id works; the tokenizer's own when it has one)."""
    tokenizer = processor.tokenizer
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def create_app(model: LlavaKitForCausalLM, processor: LlavaKitProcessor, settings: ServeSettings) -> FastAPI:
    """A new app serving `model`; its generation thread starts and stops with the app (lifespan)."""
    metrics = ServerMetrics()
    engine = BatchingEngine(
        model,
        copy.deepcopy(processor.tokenizer),
        processor.stop_token_ids,
        metrics,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        max_prefill_tokens=settings.max_prefill_tokens,
        pad_token_id=_pad_token_id(processor),
    )
    prompts = PromptBuilder(processor, settings, context_length(model, settings), model.device, model.dtype)
    state = ServerState(settings, engine, prompts, metrics, oai.now())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.close)

    app = FastAPI(title="llavakit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    _routes(app, state)
    _error_handlers(app)
    app.add_middleware(CountRequests, metrics=metrics)
    return app
