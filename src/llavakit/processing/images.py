"""Images in, pixel arrays out: decoding any file to RGB, then LLaVA's fixed-size preprocessing.

`load_image` turns a path, bytes or a PIL image into a fully decoded RGB image, or raises a
ValueError that names the file, so a dataset can report the bad sample instead of crashing
a run hours in. `preprocess` then follows one of two recipes, matched number for number
against transformers (see tests/test_images.py):

* `square`: CLIP's: resize the shortest edge to `size` (bicubic), center crop, rescale to
  [0, 1], normalise (transformers' `CLIPImageProcessor`);
* `pad`: LLaVA-1.5's: first expand the image to a square canvas filled with the mean colour,
  image centred, so nothing is cropped away; then the same steps
  (transformers' `LlavaImageProcessor(do_pad=True)`).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Above PIL's own decompression-bomb warning threshold no real training image lies.
DEFAULT_MAX_PIXELS = 89_478_485

# Resampling filters by name (the config stores the name, PIL and transformers take the enum).
RESAMPLE_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}
_MODES = ("square", "pad")

ImageSource = str | Path | bytes | Image.Image


def _describe(source: Any, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else "<PIL image>"


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grey images to 8-bit `L` (PIL's convert clips them instead)."""
    array = np.asarray(image)
    if image.mode == "F":
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.nan_to_num(array.astype(np.float64) * scale)
    elif image.mode.startswith("I;16") or (array.size and int(array.max()) > 255):
        array = array.astype(np.float64) / 257.0  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited onto white, as transformers does."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_8bit(image)
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    source: ImageSource, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode `source` to an RGB image, EXIF orientation applied.

    `name` is what errors call the image (default: the path). A file that is missing or does
    not decode, or has more than `max_pixels` pixels (None: no limit of ours), raises ValueError.
    """
    label = _describe(source, name)
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        elif isinstance(source, (str, Path)):
            if not Path(source).is_file():
                raise ValueError(f"image file {label} does not exist")
            image = Image.open(source)
        else:
            raise ValueError(f"image {label}: cannot load a {type(source).__name__}; give a path, bytes or PIL image")
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ValueError(f"image {label} has {width}x{height} pixels, more than max_pixels={max_pixels}")
        image.load()
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    except ValueError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, EOFError) as error:
        raise ValueError(f"image {label} cannot be decoded: {error}") from error
    if rgb.width == 0 or rgb.height == 0:
        raise ValueError(f"image {label} is empty ({rgb.width}x{rgb.height})")
    return rgb


@dataclass(frozen=True)
class ImageProcessingConfig:
    """How an image becomes a (3, size, size) array: `mode` is `square` (crop) or `pad` (LLaVA-1.5)."""

    mode: str = "pad"
    size: int = 336
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: str = "bicubic"

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"image mode must be one of {_MODES}, got {self.mode!r}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE_FILTERS)}, got {self.resample!r}")
        if self.size < 1:
            raise ValueError(f"image size must be positive, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each and std > 0, got {self.mean}, {self.std}")
        # Tuples whatever was passed (JSON gives lists), so configs compare and hash by value.
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))

    @property
    def fill_color(self) -> tuple[int, int, int]:
        """The `pad` canvas colour: the mean in 0..255, truncated as LLaVA-1.5 does."""
        return tuple(int(x * 255) for x in self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageProcessingConfig:
        return cls(**data)


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """The image centred on a square canvas of its longer side, the rest filled with `fill`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _resize_shortest_edge(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)  # truncation, as transformers computes the long side
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, resample=resample)


def preprocess(image: Image.Image | np.ndarray, config: ImageProcessingConfig) -> np.ndarray:
    """One image to a normalised float32 array of shape (3, size, size).

    `image` is an RGB PIL image (see `load_image`) or a uint8 (H, W, 3) array.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    elif image.mode != "RGB":
        image = _to_rgb(image)
    if config.mode == "pad":
        image = expand_to_square(image, config.fill_color)
    image = _resize_shortest_edge(image, config.size, RESAMPLE_FILTERS[config.resample])
    width, height = image.size
    top, left = (height - config.size) // 2, (width - config.size) // 2
    pixels = np.asarray(image)[top : top + config.size, left : left + config.size]
    pixels = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))
