"""Images in, pixel arrays out: decoding any file to RGB, then LLaVA's fixed-size preprocessing.

`load_image` turns a path, bytes or a PIL image into a fully decoded RGB image, or raises a
`DataError` (a ValueError) that names the file, so a dataset can report the bad sample
instead of crashing a run hours in. `preprocess` then follows one of two recipes, matched number for number
against transformers (see tests/test_images.py):

* `square`: CLIP's: resize the shortest edge to `size` (bicubic), center crop, rescale to
  [0, 1], normalise (transformers' `CLIPImageProcessor`);
* `pad`: LLaVA-1.5's: first expand the image to a square canvas filled with the mean colour,
  image centred, so nothing is cropped away; then the same steps
  (transformers' `LlavaImageProcessor(do_pad=True)`).

Memory stays bounded by the output, whatever the aspect ratio. Pillow resizes in two passes
(horizontal and vertical, rounding to 8 bits in between); llavakit runs the same passes in the
same order itself, so it can leave out what the output never reads: `square` never builds the
whole resized image (a 3000x1 image would first become 1,008,000x336 pixels, 1.3 GB) and `pad`
never builds the square canvas (whose size grows with the square of the long side). The
pixels equal the two-step recipe's, except for images more than `MAX_SIDE_RATIO` times longer
than the output side (`pad`: first reduced by a whole factor with a box filter) or than wide
(`square`: only the region the crop keeps is resized); those stay within about one 8-bit level.
benchmarks/preprocess_memory.py measures the memory; tests/test_images.py asserts the bound.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from llavakit.errors import DataError

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
# How far each filter reads either side of an output pixel's centre, in input pixels at scale 1 (Pillow's supports).
_FILTER_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0, "lanczos": 3.0, "nearest": 0.5}
# An image whose long side exceeds this many output sides is reduced by a whole factor first, so
# every intermediate of the resize passes holds at most MAX_SIDE_RATIO * side**2 pixels.
MAX_SIDE_RATIO = 64
# Pillow 13 runs the vertical pass first when the height shrinks more than twice as much as the
# width; earlier versions always run the horizontal pass first.
_PILLOW_ORDERS_PASSES = int(PIL.__version__.split(".")[0]) >= 13

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
    not decode, or has more than `max_pixels` pixels (None: no limit of ours), raises `DataError`
    (a ValueError) naming it.
    """
    label = _describe(source, name)
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        elif isinstance(source, (str, Path)):
            if not Path(source).is_file():
                raise DataError(f"image file {label} does not exist")
            image = Image.open(source)
        else:
            raise DataError(f"image {label}: cannot load a {type(source).__name__}; give a path, bytes or PIL image")
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise DataError(f"image {label} has {width}x{height} pixels, more than max_pixels={max_pixels}")
        image.load()
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    except DataError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, EOFError, ValueError) as error:
        raise DataError(f"image {label} cannot be decoded: {error}") from error
    if rgb.width == 0 or rgb.height == 0:
        raise DataError(f"image {label} is empty ({rgb.width}x{rgb.height})")
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


def reduce_long_side(image: Image.Image, size: int) -> Image.Image:
    """`image` reduced by a whole factor (box filter) when its long side exceeds `MAX_SIDE_RATIO * size`."""
    factor = math.ceil(max(image.size) / (MAX_SIDE_RATIO * size))
    return image.reduce(factor) if factor > 1 else image


def _horizontal_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Whether Pillow's `resize` from `in_size` to `out_size` (width, height) runs the horizontal pass first."""
    shrink_width, shrink_height = in_size[0] - out_size[0], in_size[1] - out_size[1]
    return not (_PILLOW_ORDERS_PASSES and shrink_height > 0 and shrink_height > 2 * shrink_width)


def _horizontal_pass(image: Image.Image, width: int, resample: str) -> Image.Image:
    """Pillow's horizontal pass alone (the height is kept, so `resize` runs no vertical pass)."""
    return image.resize((width, image.height), resample=RESAMPLE_FILTERS[resample])


def _vertical_pass(image: Image.Image, height: int, resample: str) -> Image.Image:
    """Pillow's vertical pass alone."""
    return image.resize((image.width, height), resample=RESAMPLE_FILTERS[resample])


def _resize_padded(image: Image.Image, fill: tuple[int, int, int], size: int, resample: str) -> Image.Image:
    """`expand_to_square(image, fill)` resized to `size` x `size`, without building the square.

    Pillow resizes a square horizontally first: every canvas row becomes `size` pixels wide
    (fill rows all alike, image rows from the image alone when it is wide, or from chunks of
    canvas rows when it is tall), then the `size` x side rows are resized vertically.
    """
    image = reduce_long_side(image, size)
    width, height = image.size
    side = max(width, height)
    if width == height or side == size:
        return expand_to_square(image, fill).resize((size, size), resample=RESAMPLE_FILTERS[resample])
    fill_row = _horizontal_pass(Image.new("RGB", (side, 1), fill), size, resample)
    rows = fill_row.resize((size, side), resample=Image.Resampling.NEAREST)  # the row repeated, exactly
    if width > height:
        rows.paste(_horizontal_pass(image, size, resample), (0, (side - height) // 2))
    else:
        chunk = max(1, (1 << 20) // side)  # canvas rows per horizontal pass: about 1M pixels at a time
        for top in range(0, side, chunk):
            canvas = Image.new("RGB", (side, min(chunk, side - top)), fill)
            canvas.paste(image.crop((0, top, width, top + canvas.height)), ((side - width) // 2, 0))
            rows.paste(_horizontal_pass(canvas, size, resample), (0, top))
    return _vertical_pass(rows, size, resample)


def _resize_center_crop(image: Image.Image, size: int, resample: str) -> Image.Image:
    """The shortest edge resized to `size`, then the centre `size` x `size` crop, as transformers does.

    Pillow's two passes run in its order with the crop in between, so the whole resized image is
    never built; beyond `MAX_SIDE_RATIO` only the region the crop keeps is resized (`_crop_region`).
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)  # truncation, as transformers computes the long side
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    horizontal_first = _horizontal_first((width, height), (new_width, new_height))
    if new_long > MAX_SIDE_RATIO * size:
        return _crop_region(image, (new_width, new_height), (left, top), size, resample, horizontal_first)
    if horizontal_first:
        columns = _horizontal_pass(image, new_width, resample).crop((left, 0, left + size, height))
        return _vertical_pass(columns, new_height, resample).crop((0, top, size, top + size))
    rows = _vertical_pass(image, new_height, resample).crop((0, top, width, top + size))
    return _horizontal_pass(rows, new_width, resample).crop((left, 0, left + size, size))


def _crop_region(
    image: Image.Image,
    new_size: tuple[int, int],
    offset: tuple[int, int],
    size: int,
    resample: str,
    horizontal_first: bool,
) -> Image.Image:
    """The `size`-square crop at `offset` of `image` resized to `new_size`, for an image so long that
    the resized image would not fit: the passes run in Pillow's order, and the pass along the long
    side reads only the kept region through Pillow's `box` (float32 coordinates, so pixels can
    differ from the whole resize by one 8-bit level)."""
    (width, height), filter_ = image.size, RESAMPLE_FILTERS[resample]
    (left, top), step_x, step_y = offset, width / new_size[0], height / new_size[1]
    if width > height:  # wide: only the horizontal pass is cut, and it runs first
        box = (left * step_x, 0, min(width, (left + size) * step_x), height)
        return _vertical_pass(image.resize((size, height), resample=filter_, box=box), size, resample)
    if not horizontal_first:
        box = (0, top * step_y, width, min(height, (top + size) * step_y))
        return _horizontal_pass(image.resize((width, size), resample=filter_, box=box), size, resample)
    reach = _FILTER_SUPPORT[resample] * max(step_y, 1.0) + 1.0  # rows each output row reads either side
    first = max(0, math.floor(top * step_y - reach))
    last = min(height, math.ceil((top + size) * step_y + reach))
    columns = _horizontal_pass(image.crop((0, first, width, last)), size, resample)
    box = (0, top * step_y - first, size, min(last - first, (top + size) * step_y - first))
    return columns.resize((size, size), resample=filter_, box=box)


def preprocess(image: Image.Image | np.ndarray, config: ImageProcessingConfig) -> np.ndarray:
    """One image to a normalised float32 array of shape (3, size, size).

    `image` is an RGB PIL image (see `load_image`) or a uint8 (H, W, 3) array. Memory is bounded
    by the output size whatever the aspect ratio (see the module docstring).
    """
    return normalise(resize_to_input(image, config), config)


def resize_to_input(image: Image.Image | np.ndarray, config: ImageProcessingConfig) -> np.ndarray:
    """The first half of `preprocess`: the uint8 (size, size, 3) pixels the tower will see, before
    normalisation; a quarter of the float32 array's memory, for callers that hold many images."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    elif image.mode != "RGB":
        image = _to_rgb(image)
    if config.mode == "pad":
        image = _resize_padded(image, config.fill_color, config.size, config.resample)
    else:
        image = _resize_center_crop(image, config.size, config.resample)
    return np.asarray(image)


def normalise(pixels: np.ndarray, config: ImageProcessingConfig) -> np.ndarray:
    """The second half of `preprocess`: uint8 (..., H, W, 3) pixels to normalised float32 (..., 3, H, W)."""
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis((scaled - mean) / std, -1, -3))
