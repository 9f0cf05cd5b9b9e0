"""Running an app under uvicorn: in the foreground (`llavakit serve`) or in a background thread.

`BackgroundServer` is for tests and benchmarks: it binds the socket itself (port 0 picks a
free one, known before the first request), runs uvicorn in a thread, waits until the app's
startup (and so its generation thread) is done, and shuts it down on exit.

    with BackgroundServer(create_app(model, processor, settings)) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="...")
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

# How long a stopping server lets open requests finish before it closes their connections.
GRACEFUL_SHUTDOWN_SECONDS = 5


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def uvicorn_config(app: FastAPI, log_level: str = "info", access_log: bool = True) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        lifespan="on",
    )


def run_server(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serve `app` on the listening `sock` (see `bind_socket`) until interrupted (Ctrl-C)."""
    uvicorn.Server(uvicorn_config(app, log_level)).run(sockets=[sock])


def socket_url(sock: socket.socket) -> str:
    """`http://host:port` of a bound socket (its real port when it was bound to port 0)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class BackgroundServer:
    """`app` served by uvicorn in a thread on `host` (loopback by default), for the `with` block."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.socket = bind_socket(host, port)
        self.host, self.port = self.socket.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(app, log_level, access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        return socket_url(self.socket)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
