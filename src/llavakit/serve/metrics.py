"""Counters a Prometheus server scrapes from `GET /metrics`, in its text exposition format (0.0.4).

Requests by endpoint and status, prompt and completion tokens, requests waiting and running,
decoding steps and the rows they carried (their ratio is the mean batch size), and request
latency as a histogram. Written by the event loop and the generation thread alike, so every
update holds one lock; one `ServerMetrics` belongs to one app, whose answers `CountRequests`
(pure ASGI middleware, streams included) counts.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PREFIX = "llavakit"
# Paths counted by name; any other (a typo, a scan) is counted as `other`, so labels stay few.
COUNTED_PATHS = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return "{" + inner + "}"


class Histogram:
    """Cumulative buckets, sum and count of observed values."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1

    def lines(self, name: str) -> list[str]:
        rows = [f'{name}_bucket{{le="{bound}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        rows.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        return [*rows, f"{name}_sum {self.total}", f"{name}_count {self.count}"]


class ServerMetrics:
    """What the server counts; `render` writes it for Prometheus."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.decode_steps = 0
        self.decode_rows = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.first_token = Histogram(LATENCY_BUCKETS)

    def request_done(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def answered(self, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        """One generation finished: its tokens and its latency from arrival to last token."""
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.latency.observe(seconds)

    def first_token_after(self, seconds: float) -> None:
        with self._lock:
            self.first_token.observe(seconds)

    def decoded(self, rows: int) -> None:
        """One shared decoding step ran for `rows` requests."""
        with self._lock:
            self.decode_steps += 1
            self.decode_rows += rows

    def render(self, waiting: int, running: int) -> str:
        """The exposition text; `waiting` and `running` are read from the engine at scrape time."""
        with self._lock:
            return "\n".join(self._lines(waiting, running)) + "\n"

    def _lines(self, waiting: int, running: int) -> list[str]:
        def metric(name: str, kind: str, help_: str, rows: list[str] | Callable[[str], list[str]]) -> list[str]:
            full = f"{PREFIX}_{name}"
            body = rows(full) if callable(rows) else [f"{full}{row}" for row in rows]
            return [f"# HELP {full} {help_}", f"# TYPE {full} {kind}", *body]

        requests = [
            f"{_labels(endpoint=endpoint, status=str(status))} {count}"
            for (endpoint, status), count in sorted(self.requests.items())
        ]
        return [
            *metric("requests_total", "counter", "HTTP requests answered, by endpoint and status.", requests),
            *metric(
                "prompt_tokens_total", "counter", "Prompt tokens (image tokens included).", [f" {self.prompt_tokens}"]
            ),
            *metric("completion_tokens_total", "counter", "Generated tokens.", [f" {self.completion_tokens}"]),
            *metric("queue_length", "gauge", "Requests waiting for a batch slot.", [f" {waiting}"]),
            *metric("running_requests", "gauge", "Requests in the running batch.", [f" {running}"]),
            *metric("decode_steps_total", "counter", "Shared decoding steps.", [f" {self.decode_steps}"]),
            *metric("decode_rows_total", "counter", "Requests carried by decoding steps.", [f" {self.decode_rows}"]),
            *metric("request_latency_seconds", "histogram", "Arrival to last token.", self.latency.lines),
            *metric("time_to_first_token_seconds", "histogram", "Arrival to first token.", self.first_token.lines),
        ]


class CountRequests:
    """ASGI middleware that counts every HTTP answer by endpoint and status (streams included)."""

    def __init__(self, app: Callable, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in COUNTED_PATHS else "other"

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.request_done(endpoint, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
