"""An `image_url` of a request as a decoded RGB image, every limit checked before the costly step.

Three kinds of URL, each off unless it is safe or switched on:

* `data:image/...;base64,...`: always on. The encoded length is checked before decoding, the
  base64 must be well formed, and the file's bytes must fit `max_image_bytes`.
* a local path (`file:///...` or a plain path, relative paths under the folder): only with
  `--image-folder`, and only files under that folder once symlinks and `..` are resolved.
* `http(s)://...`: only with `--allow-remote-images` (fetching arbitrary URLs lets a client
  make the server call other machines), with a timeout and the byte limit while reading.

Every file's width and height are read from its header, before a pixel is decoded, and an
image over `max_image_pixels` is refused: a few-kilobyte PNG can declare gigapixels
(a decompression bomb). Only common photo formats are opened.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from llavakit.errors import DataError
from llavakit.processing.images import load_image
from llavakit.serve.api_errors import APIError, bad_request
from llavakit.serve.settings import ServeSettings

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG covers multi-picture (MPO) files
_DATA_URI = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),", re.ASCII)
_WHITESPACE = re.compile(rb"\s+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")  # RFC 3986; a path such as `a/b:c.png` has none


def _too_large(size: int, limit: int, param: str, what: str) -> APIError:
    return bad_request(f"{what} is {size} bytes, more than the limit of {limit} bytes", param, "image_too_large")


def decode_data_uri(url: str, limit: int, param: str) -> bytes:
    """The bytes of a `data:image/...;base64,` URI; malformed or over `limit`: a 400."""
    match = _DATA_URI.match(url)
    if match is None:
        raise bad_request(f"{param}: a data URI must look like data:image/png;base64,<data>", param, "invalid_image")
    media_type, params = match["type"].strip().lower(), match["params"].lower().split(";")
    if not media_type.startswith("image/"):
        raise bad_request(f"{param}: the data URI's media type {media_type!r} is not image/*", param, "invalid_image")
    if "base64" not in params:
        raise bad_request(f"{param}: the data URI must be base64-encoded (;base64,)", param, "invalid_image")
    encoded = _WHITESPACE.sub(b"", url[match.end() :].encode("ascii", "replace"))
    if len(encoded) // 4 * 3 > limit + 2:  # decoding would already pass the limit
        raise _too_large(len(encoded) // 4 * 3, limit, param, f"{param}: the image")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request(f"{param}: the image's base64 data is malformed ({error})", param, "invalid_base64") from None
    if not data:
        raise bad_request(f"{param}: the data URI holds no image data", param, "invalid_image")
    if len(data) > limit:
        raise _too_large(len(data), limit, param, f"{param}: the image")
    return data


def _local_path(url: str, folder: Path | None, param: str) -> Path:
    """A `file://` URL or plain path as a file under `folder`, or a 400 saying why not."""
    if folder is None:
        raise bad_request(
            f"{param}: local image paths are off; the server reads local files only under the folder it was "
            "started with (--image-folder); send the image as a base64 data URI",
            param,
            "local_images_disabled",
        )
    raw = urllib.parse.unquote(urllib.parse.urlparse(url).path) if url.startswith("file://") else url
    path = (folder / raw).resolve()  # an absolute `raw` replaces `folder`, then must lie under it
    if not path.is_relative_to(folder):
        raise bad_request(f"{param}: {raw} is outside the image folder", param, "path_outside_image_folder")
    if not path.is_file():
        raise bad_request(f"{param}: image file {raw} does not exist in the image folder", param, "image_not_found")
    return path


def _read_local(url: str, settings: ServeSettings, param: str) -> bytes:
    path = _local_path(url, settings.image_folder, param)
    size = path.stat().st_size
    if size > settings.max_image_bytes:
        raise _too_large(size, settings.max_image_bytes, param, f"{param}: image file {path.name}")
    return path.read_bytes()


def _fetch_remote(url: str, settings: ServeSettings, param: str) -> bytes:
    """An http(s) image, read up to the byte limit, when remote images are switched on."""
    if not settings.allow_remote_images:
        raise bad_request(
            f"{param}: remote image URLs are off on this server (start it with --allow-remote-images); "
            "send the image as a base64 data URI",
            param,
            "remote_images_disabled",
        )
    limit = settings.max_image_bytes
    try:
        with urllib.request.urlopen(url, timeout=settings.remote_timeout) as response:
            data = response.read(limit + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise bad_request(f"{param}: cannot fetch the image {url}: {error}", param, "image_fetch_failed") from None
    if len(data) > limit:
        raise _too_large(len(data), limit, param, f"{param}: the image at {url}")
    return data


def image_bytes(url: str, settings: ServeSettings, param: str) -> bytes:
    """The file bytes an `image_url` points at, by its kind (see the module docstring)."""
    match = _SCHEME.match(url)
    scheme = match[1].lower() if match else ""
    if scheme == "data":
        return decode_data_uri(url, settings.max_image_bytes, param)
    if scheme in ("http", "https"):
        return _fetch_remote(url, settings, param)
    if scheme in ("file", ""):
        return _read_local(url, settings, param)
    raise bad_request(f"{param}: unsupported image URL scheme {scheme!r}; use a data URI", param, "invalid_image")


def check_image_header(data: bytes, max_pixels: int, param: str) -> tuple[int, int]:
    """The image's (width, height) from its header alone; not an image, or too many pixels: a 400."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        said = f"{param}: the image has more pixels than the limit of {max_pixels} ({error})"
        raise bad_request(said, param, "image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        said = ", ".join(FORMATS)
        raise bad_request(
            f"{param}: the data is not an image this server reads ({said})", param, "invalid_image"
        ) from None
    if width * height > max_pixels:
        raise bad_request(
            f"{param}: the image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}",
            param,
            "image_too_large",
        )
    return width, height


def load_request_image(url: str, settings: ServeSettings, param: str) -> Image.Image:
    """The decoded RGB image of one `image_url`, or a 400 naming `param` and the problem."""
    data = image_bytes(url, settings, param)
    check_image_header(data, settings.max_image_pixels, param)
    try:
        return load_image(data, name=param, max_pixels=settings.max_image_pixels)
    except DataError as error:
        raise bad_request(str(error), param, "invalid_image") from None
