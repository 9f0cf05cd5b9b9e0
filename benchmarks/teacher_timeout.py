"""The LLM teacher against a stalled server: giving up after `timeout` and retrying vs waiting the stall out.

Run: .venv/bin/python benchmarks/teacher_timeout.py [--stall 3.0] [--timeouts 0.5 10]

Why: an OpenAI-compatible server under load sometimes holds a request far longer than it
takes to answer a fresh one; `LLMConfig.timeout` bounds how long one instruction sample can
hang the run. A local server (stdlib http.server on 127.0.0.1) holds its first request for
`--stall` seconds and answers every later one at once. For each client timeout, side by
side, one `ChatClient.complete` call is timed: below the stall the client gives up, backs
off `--base-delay` and is answered by the retry (about timeout + delay); above it, it waits
the stall out. Printed: wall seconds, requests sent and retries, as the client counted them.
Needs the `instruct` extra (the openai SDK).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llavakit.synthetic.prompts import EXAMPLE_SCENES, build_messages
from llavakit.synthetic.teacher import ChatClient, LLMConfig


def completion(content: str) -> bytes:
    """A chat-completions response body holding `content`."""
    message = {"role": "assistant", "content": content}
    return json.dumps(
        {
            "id": "benchmark",
            "object": "chat.completion",
            "created": 0,
            "model": "teacher",
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def stalling_server(stall: float) -> ThreadingHTTPServer:
    """A chat-completions server whose first request waits `stall` seconds before its answer."""
    first_request = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if not first_request.is_set():
                first_request.set()
                time.sleep(stall)
            data = completion("A red circle above a blue square.")
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on this request

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def timed_request(stall: float, timeout: float, base_delay: float) -> tuple[float, int, int]:
    """(wall seconds, requests, retries) of one completion from a fresh stalling server."""
    server = stalling_server(stall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    config = LLMConfig("teacher", base_url=url, api_key_env="NO_KEY_NEEDED", timeout=timeout, base_delay=base_delay)
    client = ChatClient(config)
    try:
        start = time.perf_counter()
        _, usage = client.complete(build_messages("detail", EXAMPLE_SCENES[0]))
        return time.perf_counter() - start, usage.requests, usage.retries
    finally:
        client.close()
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stall", type=float, default=3.0, help="seconds the server holds its first request")
    parser.add_argument("--timeouts", type=float, nargs="+", default=[0.5, 10.0])
    parser.add_argument("--base-delay", type=float, default=0.1, help="back-off before the first retry")
    args = parser.parse_args()
    print(f"server stalls its first request {args.stall:g} s; back-off {args.base_delay:g} s")
    print("| client timeout (s) | wall (s) | requests | retries |")
    print("|---:|---:|---:|---:|")
    for timeout in args.timeouts:
        seconds, requests, retries = timed_request(args.stall, timeout, args.base_delay)
        print(f"| {timeout:g} | {seconds:.2f} | {requests} | {retries} |")


if __name__ == "__main__":
    main()
