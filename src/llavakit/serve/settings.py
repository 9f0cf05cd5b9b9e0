"""What a server accepts and how it batches: one frozen object, filled from `llavakit serve`'s flags.

Every limit a request can break lives here with its default, so the command line, the app,
the error messages and docs/serving.md name the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llavakit.errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    """Limits, batching and access of one server.

    `max_body_bytes` bounds the whole JSON body (base64 images included); `max_image_bytes`
    each decoded image file; `max_image_pixels` each image's width x height, read from its
    header before any pixel is decoded (decompression bombs); `max_images` a request's images.
    `max_context` None: the language model's `max_position_embeddings`. `max_queue` bounds the
    requests waiting for a batch slot (past it: 503 with Retry-After); `max_prefill_tokens` the
    padded prompt tokens prefilled in one forward pass (requests admitted together share it).
    `image_folder` enables local image paths under it; `allow_remote_images` http(s) image URLs.
    """

    model_name: str = "llavakit"
    api_key: str | None = None
    max_batch_size: int = 32
    max_queue: int = 64
    max_prefill_tokens: int = 8192
    max_body_bytes: int = 32 * MIB
    max_image_bytes: int = 16 * MIB
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8
    max_context: int | None = None
    default_max_tokens: int = 256
    image_folder: Path | None = None
    allow_remote_images: bool = False
    remote_timeout: float = 10.0
    retry_after_seconds: int = 1

    def __post_init__(self) -> None:
        positive = {
            "max_batch_size": self.max_batch_size,
            "max_queue": self.max_queue,
            "max_prefill_tokens": self.max_prefill_tokens,
            "max_body_bytes": self.max_body_bytes,
            "max_image_bytes": self.max_image_bytes,
            "max_image_pixels": self.max_image_pixels,
            "default_max_tokens": self.default_max_tokens,
            "retry_after_seconds": self.retry_after_seconds,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.max_images < 0:
            raise ConfigError(f"max_images must not be negative, got {self.max_images}")
        if self.max_context is not None and self.max_context < 2:
            raise ConfigError(f"max_context must be at least 2, got {self.max_context}")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("the API key is empty: give a key or leave --api-key out")
        if self.image_folder is not None:
            folder = Path(self.image_folder)
            if not folder.is_dir():
                raise ConfigError(f"--image-folder {folder} is not an existing folder")
            object.__setattr__(self, "image_folder", folder.resolve())
