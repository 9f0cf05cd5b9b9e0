"""OpenAI's chat-completions format: the request schema, checked strictly, and the replies it expects.

A request is parsed with strict pydantic models (unknown fields and wrong types are refused,
nothing is coerced: `"5"` is not a number), so a client learns at once that a parameter it
relies on is not honoured. Fields of OpenAI's API that this server does not implement are
accepted only at their neutral value (`logprobs: false`, `presence_penalty: 0`, ...) and
refused otherwise, naming the field. Replies and stream chunks are built here in OpenAI's
shapes (`chat.completion`, `chat.completion.chunk`), which the official clients parse.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llavakit.serve.api_errors import APIError, bad_request

MAX_STOP_SEQUENCES = 4
# OpenAI fields this server does not implement, with the values that ask for nothing (accepted as no-ops).
UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "store": (None, False),
    "metadata": (None, {}),
    "service_tier": (None, "auto", "default"),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """The fields of OpenAI's `POST /v1/chat/completions` that this server implements."""

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ---- parsing ----------------------------------------------------------------------------------


def _not_json(name: str) -> Any:
    """Python's JSON reader takes NaN and Infinity; JSON (and so a client's request) has no such numbers."""
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def parse_json(body: bytes) -> Any:
    """The body as JSON, or a 400 saying where it is malformed."""
    try:
        return json.loads(body, parse_constant=_not_json)
    except UnicodeDecodeError as error:
        raise bad_request(f"the request body is not UTF-8 text: {error}", code="invalid_json") from None
    except json.JSONDecodeError as error:
        raise bad_request(
            f"the request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise bad_request("the request body is not valid JSON: nested too deeply", code="invalid_json") from None


def _is_branch(part: Any) -> bool:
    """A union member's name that pydantic puts into an error location (`str`, `list[...]`), not a field."""
    return isinstance(part, str) and (part == "str" or part.startswith("list["))


def _param(location: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path: `messages[0].content[1].image_url.url`.

    Union members' names and the tag of a content part (`text` / `image_url` right after its
    index) are left out, so the path names only fields and indices.
    """
    path, tagged, tag_next = "", False, False
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
            tag_next, tagged = tagged, False
        elif _is_branch(part):
            tagged = part.startswith("list[tagged-union")
        elif tag_next:
            tag_next = False
        else:
            path += f".{part}" if path else str(part)
    return path


def _relevant(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The error to report: not a union member the input was never meant for (a list checked as `str`)."""
    for error in errors:
        location = error["loc"]
        if not (error["type"] in ("string_type", "list_type") and location and _is_branch(location[-1])):
            return error
    return errors[0]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validation_error(error: ValidationError) -> APIError:
    """The first problem pydantic found, as a 400 naming the field and what was wrong with it."""
    first = _relevant(error.errors(include_url=False))
    param = _param(tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        field = param.rsplit(".", 1)[-1]
        where = "" if "." not in param and "[" not in param else f" in {param.rsplit('.', 1)[0]}"
        return bad_request(f"Unrecognized request argument supplied: {field}{where}", param=param)
    if first["type"] == "missing":
        return bad_request(f"{param} is required", param=param, code="missing_required_parameter")
    shown = f" (got {_shown(first['input'])})" if "input" in first and first["type"] != "union_tag_invalid" else ""
    said = first["msg"]
    if first["loc"] and _is_branch(first["loc"][-1]):  # no member of a union fits: name them all
        said = "Input should be a string or a list"
    return bad_request(f"{param}: {said}{shown}", param=param, code="invalid_value")


def _check_unsupported(data: dict[str, Any]) -> dict[str, Any]:
    """Refuse what is asked of a field this server does not implement; drop the neutral ones."""
    kept = {}
    for key, value in data.items():
        neutral = UNSUPPORTED_FIELDS.get(key)
        if neutral is None:
            kept[key] = value
        elif value not in neutral:
            raise bad_request(
                f"{key} is not supported by this server (llavakit serve); leave it out", param=key, code="unsupported"
            )
    return kept


def _check_request(request: ChatCompletionRequest) -> None:
    """Rules that cross fields or that pydantic's messages would say less clearly."""
    if request.n is not None and request.n != 1:
        raise bad_request(f"n must be 1 (one choice per request), got {request.n}", param="n", code="unsupported")
    stops = request.stop_sequences
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}", param="stop")
    if any(not stop for stop in stops):
        raise bad_request("stop sequences must not be empty strings", param="stop")
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options is only allowed with stream: true", param="stream_options")


def parse_chat_request(data: Any) -> ChatCompletionRequest:
    """A decoded JSON body as a checked request, or a 400 naming the first problem."""
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got a JSON {type(data).__name__}")
    try:
        request = ChatCompletionRequest.model_validate(_check_unsupported(data))
    except ValidationError as error:
        raise _validation_error(error) from None
    _check_request(request)
    return request


# ---- replies ----------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    id_: str, created: int, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A whole answer (`stream: false`)."""
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    id_: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One piece of a streamed answer; with `usage_counts` and no delta, the final usage-only chunk."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    data: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_counts is not None:
        data["usage"] = usage_counts
    return data


def server_sent_event(data: dict[str, Any] | str) -> bytes:
    """One `data:` event; a dict as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def model_list(model: str, created: int) -> dict[str, Any]:
    """`GET /v1/models`: the one model this server serves."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "llavakit"}]}
