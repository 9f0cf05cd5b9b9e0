"""Load on an OpenAI-compatible server: many clients for a bounded time, latencies, tokens, errors.

Used by tests/test_serve_load.py and benchmarks/serve_throughput.py, and usable against any
chat-completions server. Each client is a thread with its own keep-alive connection (stdlib
`http.client`, so the clients cost the machine little next to the server) that sends request
bodies in turn until the deadline; the loop stops by itself, with at most one request per client
still finishing. Streamed answers are read to the end and counted from their usage chunk.

`start_server_process` runs `llavakit serve` in a child process (so its memory can be read on
its own) and returns once it answers `/health`.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SERVE = (
    "import argparse, sys\n"
    "from llavakit.serve.command import add_serve_parser\n"
    "parser = argparse.ArgumentParser(prog='llavakit')\n"
    "add_serve_parser(parser.add_subparsers(dest='command'))\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.run(args))\n"
)


@dataclass
class LoadResult:
    """What the clients saw: per request latency and tokens, errors, and answers by request body."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)
    answers: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def percentile(self, share: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(share * 100) - 1]

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.1f} s, {len(self.errors)} errors; "
            f"latency p50 {self.percentile(0.5):.3f} s, p95 {self.percentile(0.95):.3f} s; "
            f"{self.tokens_per_second:.0f} completion tokens/s"
        )


def chat_request(
    host: str, port: int, body: dict[str, Any], api_key: str | None = None, connection=None, timeout: float = 300
) -> tuple[int, int, str]:
    """POST one chat completion; (status, completion tokens, answer text). Streams are read to the end."""
    connection = connection or http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    connection.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
    response = connection.getresponse()
    raw = response.read()
    if response.status != 200:
        return response.status, 0, raw.decode("utf-8", "replace")
    if not body.get("stream"):
        reply = json.loads(raw)
        return 200, reply["usage"]["completion_tokens"], reply["choices"][0]["message"]["content"]
    return _read_stream(raw.decode())


def _read_stream(text: str) -> tuple[int, int, str]:
    """The answer and token count of a streamed reply (its usage chunk needs `include_usage`)."""
    pieces, tokens = [], 0
    for block in text.split("\n\n"):
        if not block.startswith("data: ") or block == "data: [DONE]":
            continue
        chunk = json.loads(block[len("data: ") :])
        if "error" in chunk:
            return 500, 0, chunk["error"]["message"]
        for choice in chunk.get("choices", []):
            pieces.append(choice["delta"].get("content") or "")
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    return 200, tokens, "".join(pieces)


def _client(
    host: str, port: int, bodies: Sequence[dict[str, Any]], start: int, deadline: float, api_key, result, lock
) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=300)
    index = start
    while time.monotonic() < deadline:
        which = index % len(bodies)
        began = time.perf_counter()
        try:
            status, tokens, text = chat_request(host, port, bodies[which], api_key, connection)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
            status, tokens, text = 0, 0, f"{type(error).__name__}: {error}"
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=300)
        elapsed = time.perf_counter() - began
        with lock:
            if status == 200:
                result.latencies.append(elapsed)
                result.completion_tokens += tokens
                result.answers[which].add(text)
            else:
                result.errors.append(f"{status}: {text[:200]}")
        index += 1
    connection.close()


def run_load(
    host: str, port: int, bodies: Sequence[dict[str, Any]], clients: int, seconds: float, api_key: str | None = None
) -> LoadResult:
    """`clients` threads sending `bodies` in turn (each starting at its own) for `seconds`; then all stop."""
    result, lock = LoadResult(), threading.Lock()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client, args=(host, port, bodies, start, deadline, api_key, result, lock))
        for start in range(clients)
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - began
    return result


# ---- a server in a child process ----------------------------------------------------------------


@dataclass
class ServerProcess:
    """`llavakit serve` running in a child process; `close` stops it."""

    process: subprocess.Popen
    url: str
    log: Path

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def resident_bytes(self) -> int:
        """The server's resident memory (RSS) now."""
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.unlink(missing_ok=True)


def start_server_process(checkpoint: str | Path, *flags: str, timeout: float = 120.0, env=None) -> ServerProcess:
    """`llavakit serve CHECKPOINT --port 0 FLAGS` in a child process, once it answers `/health`."""
    log = Path(tempfile.mkstemp(prefix="llavakit-serve-", suffix=".log")[1])
    with open(log, "wb") as handle:
        command = [sys.executable, "-c", _SERVE, "serve", str(checkpoint), "--port", "0", *flags]
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    url = None
    while url is None or not _healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"llavakit serve did not start:\n{log.read_text()[-3000:]}")
        url = url or _announced_url(log)
        time.sleep(0.1)
    return ServerProcess(process, url, log)


def _announced_url(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("serving ") and " on http://" in line:
            return line.split(" on ", 1)[1].split()[0]
    return None


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
