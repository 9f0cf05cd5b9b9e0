"""`llavakit serve CKPT`: a checkpoint behind an OpenAI-compatible API and a chat page.

    llavakit serve runs/stage2 --port 8000 --api-key "$KEY" --image-folder photos/

The checkpoint loads as `llavakit chat` loads it (`--dtype`, `--device`, `--device-map`,
`--load-in-4bit/8bit` mean the same), then uvicorn serves `serve.app.create_app`. This module
only describes the flags and imports nothing heavy, so `llavakit --help` stays instant; the
web stack loads when the command runs. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from llavakit.errors import ConfigError
from llavakit.loading_options import add_loading_options, quantization_mode
from llavakit.serve.settings import MIB, ServeSettings

API_KEY_ENV = "LLAVAKIT_API_KEY"


def _add_limits(parser: argparse.ArgumentParser) -> None:
    """How requests share the model, and what one may ask for (past a limit it gets a 4xx naming it)."""
    limits = parser.add_argument_group("batching and limits (a request past a limit gets a 4xx naming it)")
    limits.add_argument("--max-batch-size", type=int, default=32, help="requests sharing a decoding step (32)")
    limits.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting for a batch slot; past it, 503 (64)"
    )
    limits.add_argument(
        "--max-prefill-tokens", type=int, default=8192, help="padded prompt tokens prefilled together (8192)"
    )
    limits.add_argument("--max-images", type=int, default=8, help="images per request (8)")
    limits.add_argument(
        "--max-image-pixels", type=int, default=4096 * 4096, help="width x height per image, from its header (16.7M)"
    )
    limits.add_argument("--max-image-mb", type=float, default=16.0, help="bytes per image file, in MiB (16)")
    limits.add_argument("--max-body-mb", type=float, default=32.0, help="bytes per request body, in MiB (32)")
    limits.add_argument(
        "--max-context", type=int, help="prompt + answer tokens (default: the model's max_position_embeddings)"
    )
    limits.add_argument(
        "--default-max-tokens", type=int, default=256, help="answer tokens when a request gives no max_tokens"
    )


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """`llavakit serve`: an OpenAI-compatible API, streaming and batching, and a chat page."""
    serve = commands.add_parser(
        "serve",
        help="serve a checkpoint: OpenAI-compatible API (streaming, batching) and a chat page at /",
        description="POST /v1/chat/completions (OpenAI format: text and image_url parts, stream, max_tokens, "
        "temperature, top_p, stop, seed), GET /v1/models, /health, /metrics, and a chat page at /. "
        "Concurrent requests share decoding steps. See docs/serving.md.",
    )
    serve.add_argument("checkpoint", help="local llavakit checkpoint folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: a free one, printed at start)")
    serve.add_argument(
        "--api-key", help=f"key clients must send as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; none: open)"
    )
    serve.add_argument("--model-name", help="the model id clients name (default: the checkpoint folder's name)")
    serve.add_argument(
        "--image-folder", help="allow local image paths (file:// or relative) under this folder only (default: off)"
    )
    serve.add_argument(
        "--allow-remote-images", action="store_true", help="fetch http(s) image URLs (default: off; data URIs only)"
    )
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    _add_limits(serve)
    add_loading_options(serve)
    serve.set_defaults(run=run_serve)


def _settings(args: argparse.Namespace) -> ServeSettings:
    """The command's flags as `ServeSettings`, checked before the model loads."""
    return ServeSettings(
        model_name=args.model_name or Path(args.checkpoint).resolve().name,
        api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        max_prefill_tokens=args.max_prefill_tokens,
        max_body_bytes=int(args.max_body_mb * MIB),
        max_image_bytes=int(args.max_image_mb * MIB),
        max_image_pixels=args.max_image_pixels,
        max_images=args.max_images,
        max_context=args.max_context,
        default_max_tokens=args.default_max_tokens,
        image_folder=Path(args.image_folder) if args.image_folder else None,
        allow_remote_images=args.allow_remote_images,
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _listen(host: str, port: int):
    """The listening socket, opened before the model loads so that a taken port fails at once."""
    from llavakit.serve.server import bind_socket

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    try:
        return bind_socket(host, port)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def run_serve(args: argparse.Namespace) -> int:
    """Load the checkpoint and serve it until interrupted."""
    try:
        from llavakit.serve.app import create_app
        from llavakit.serve.server import run_server, socket_url
    except ImportError as error:
        raise ConfigError(
            f"llavakit serve needs the serve extra ({error.name} is missing): pip install 'llavakit[serve]'"
        ) from error
    from llavakit.serve.chat import load_chat_model

    settings = _settings(args)
    if settings.api_key is None and not _is_loopback(args.host):
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    sock = _listen(args.host, args.port)
    quantization = quantization_mode(args.load_in_4bit, args.load_in_8bit)
    model, processor = load_chat_model(
        args.checkpoint, args.device, args.dtype, device_map=args.device_map, quantization=quantization
    )
    app = create_app(model, processor, settings)
    print(f"serving {settings.model_name} on {socket_url(sock)} (chat page at /)", file=sys.stderr, flush=True)
    run_server(app, sock, args.log_level)
    return 0
