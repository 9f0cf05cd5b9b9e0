"""High-resolution image preprocessing: LLaVA-1.5-HD, LLaVA-NeXT AnyRes and OneVision crops.

One image becomes its base (global) image, resized to the encoder's square input, followed
by the crops of a canvas chosen among `grid_pinpoints` (`anyres.select_best_resolution`):
the image is resized into the canvas keeping its aspect ratio, padded centred with black
(`anyres.resize_and_pad_size`) and cut into encoder-sized crops, row by row. The model
merges the crops' features back with the same `llavakit.model.anyres` functions, and
`HighResConfig.num_tokens` counts the features it will produce, so `<image>` expansion
and the model cannot disagree.

Output layout, shared with `LlavaKitForCausalLM` (and accepted by transformers' LlavaNext /
OneVision models): `pixel_values` stacks every image's crops flat, `(sum of crops, 3, S, S)`,
base first per image; `image_sizes` `(images, 2)` holds the original (height, width);
`image_num_crops` the crops per image (1 for an image encoded at base resolution only).

Two resize backends (`HighResConfig.resize_backend`):

* `pil` (default): the pixels equal transformers' `LlavaNextImageProcessor` /
  `LlavaOnevisionImageProcessor` (PIL backends) bit for bit (tests/test_highres.py), about
  twice as fast: normalisation is a lookup table applied once per crop instead of float64
  passes, and no resize runs twice;
* `torch`: torch's antialiased uint8 resize (the kernel transformers' torchvision "fast"
  processors use), several times faster than PIL; pixels differ from PIL's by at most a
  couple of 8-bit levels on a small share of pixels (benchmarks/preprocess_vs_hf.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from llavakit.model import anyres
from llavakit.processing.images import (
    RESAMPLE_FILTERS,
    ImageProcessingConfig,
    preprocess,
)

Size = tuple[int, int]
RESIZE_BACKENDS = ("pil", "torch")
# torch's antialiased resize modes matching PIL's filters (PIL's bicubic uses a = -0.5, as torch's AA kernel).
_TORCH_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}


@dataclass(frozen=True)
class HighResConfig:
    """Image layout of the grid modes; built from the model config (`LlavaKitProcessor.from_model_config`).

    mode: `hd`, `anyres` or `anyres_max_N` (see `LlavaKitConfig.image_mode`).
    crop_size / patch_size: the encoder's input side and ViT patch.
    grid_pinpoints: the candidate canvases (height, width), each a whole number of crops.
    newline: features carry newline vectors (row ends; one after a base-only image).
    multi_image_base_only: a sample with several images encodes each at base resolution.
    resize_backend: `pil` (identical to transformers' PIL processors) or `torch` (faster,
        within a couple of 8-bit levels; bicubic and bilinear only).
    feature_side: side of one crop's map after the connector (`LlavaKitConfig.feature_side`); None:
        one feature per patch (`crop_size // patch_size`), as every connector without a budget.
    """

    mode: str
    crop_size: int
    patch_size: int
    grid_pinpoints: tuple[Size, ...]
    newline: bool = True
    multi_image_base_only: bool = False
    resize_backend: str = "pil"
    feature_side: int | None = None

    def __post_init__(self):
        if self.feature_side is not None and self.feature_side < 1:
            raise ValueError(f"feature_side must be >= 1, got {self.feature_side}")
        if self.resize_backend not in RESIZE_BACKENDS:
            raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {self.resize_backend!r}")
        if self.mode not in ("hd", "anyres") and not self.mode.startswith("anyres_max_"):
            raise ValueError(f"high-resolution mode must be hd, anyres or anyres_max_N, got {self.mode!r}")
        if self.mode.startswith("anyres_max_"):
            anyres.parse_anyres_max(self.mode)
        anyres.tokens_per_side(self.crop_size, self.patch_size)
        pinpoints = tuple(anyres.parse_grid_pinpoints(list(self.grid_pinpoints), self.crop_size))
        for height, width in pinpoints:
            if height % self.crop_size or width % self.crop_size:
                raise ValueError(
                    f"grid pinpoint {(height, width)} is not a whole number of {self.crop_size}-pixel crops"
                )
        object.__setattr__(self, "grid_pinpoints", pinpoints)

    @property
    def base_tokens(self) -> int:
        """Features of one crop (the base image's count)."""
        return self.side**2

    @property
    def side(self) -> int:
        """Side of one crop's feature map as the language model receives it."""
        return self.feature_side or anyres.tokens_per_side(self.crop_size, self.patch_size)

    def num_crops(self, image_size, base_only: bool = False) -> int:
        """Encoder inputs for one image: the base image plus its grid's cells."""
        return 1 if base_only else 1 + anyres.num_grid_cells(image_size, self.grid_pinpoints, self.crop_size)

    def num_tokens(self, image_size, base_only: bool = False) -> int:
        """Visual tokens one image of `image_size` (height, width) becomes in the model."""
        if base_only:
            return self.base_tokens + int(self.newline)
        return anyres.num_image_tokens(
            self.mode,
            image_size,
            crop_size=self.crop_size,
            patch_size=self.patch_size,
            pinpoints=self.grid_pinpoints,
            newline=self.newline,
            side=self.side,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "crop_size": self.crop_size,
            "patch_size": self.patch_size,
            "grid_pinpoints": [list(p) for p in self.grid_pinpoints],
            "newline": self.newline,
            "multi_image_base_only": self.multi_image_base_only,
            "resize_backend": self.resize_backend,
            "feature_side": self.feature_side,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HighResConfig:
        return cls(**{**data, "grid_pinpoints": tuple(tuple(p) for p in data["grid_pinpoints"])})


class ImageCrops(NamedTuple):
    """One image, preprocessed: `pixel_values` (crops, 3, S, S) float32 and its original (height, width)."""

    pixel_values: np.ndarray
    image_size: Size


def normalization_table(config: ImageProcessingConfig) -> np.ndarray:
    """`(3, 256)` float32: the normalised value of every uint8 level per channel.

    Computed with transformers' exact operations (float64 rescale, cast to float32, then
    `(x - mean) / std` in float32), so a lookup gives bit-identical results.
    """
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(config.mean, dtype=np.float32)[:, None]
    std = np.asarray(config.std, dtype=np.float32)[:, None]
    return (levels[None, :] - mean) / std


def _normalize_into(out: np.ndarray, pixels: np.ndarray, table: np.ndarray) -> None:
    """Write normalised channels-first values of uint8 `pixels` (H, W, 3) into `out` (3, H, W)."""
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel], mode="clip")


def _rgb(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        return Image.fromarray(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize_source(image: Image.Image, config: ImageProcessingConfig, backend: str) -> Image.Image | torch.Tensor:
    """What a backend resizes from: the PIL image (`pil`), or its pixels converted once to a
    `(1, 3, H, W)` uint8 tensor with channels-last strides (`torch`), shared by every resize of it."""
    if backend == "pil":
        return image
    if backend != "torch":
        raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {backend!r}")
    if config.resample not in _TORCH_MODES:
        raise ValueError(
            f"the torch resize backend supports {sorted(_TORCH_MODES)}, not {config.resample!r}; use 'pil'"
        )
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]


def _resize(source: Image.Image | torch.Tensor, height: int, width: int, config: ImageProcessingConfig) -> np.ndarray:
    if isinstance(source, Image.Image):
        if source.size == (width, height):
            return np.asarray(source)
        return np.asarray(source.resize((width, height), resample=RESAMPLE_FILTERS[config.resample]))
    if tuple(source.shape[2:]) != (height, width):
        mode = _TORCH_MODES[config.resample]
        source = torch.nn.functional.interpolate(source, size=(height, width), mode=mode, antialias=True)
    return source[0].permute(1, 2, 0).numpy()


def _normalized_square(source, config: ImageProcessingConfig, table: np.ndarray) -> np.ndarray:
    out = np.empty((3, config.size, config.size), dtype=np.float32)
    _normalize_into(out, _resize(source, config.size, config.size, config), table)
    return out


def resize_square(
    image: Image.Image | np.ndarray,
    config: ImageProcessingConfig,
    table: np.ndarray | None = None,
    backend: str = "pil",
) -> np.ndarray:
    """(3, S, S): the whole image squashed to the encoder's input, as the base image and video frames are."""
    table = normalization_table(config) if table is None else table
    return _normalized_square(_resize_source(_rgb(image), config, backend), config, table)


def anyres_crops(image: Image.Image | np.ndarray, highres: HighResConfig, config: ImageProcessingConfig) -> ImageCrops:
    """Base image + canvas crops `(1 + rows * cols, 3, S, S)` of one RGB image.

    Matches transformers' LLaVA-NeXT preprocessing: the base image squashed to S x S; the
    image resized into the best canvas (aspect kept, the short side rounded up), padded
    black and centred, cut into row-major crops; all with the config's filter (bicubic).
    """
    image = _rgb(image)
    size = config.size
    height, width = image.height, image.width
    canvas_h, canvas_w = anyres.select_best_resolution((height, width), highres.grid_pinpoints)
    place = anyres.resize_and_pad_size((height, width), (canvas_h, canvas_w))
    table = normalization_table(config)
    source = _resize_source(image, config, highres.resize_backend)
    out = np.empty((1 + (canvas_h // size) * (canvas_w // size), 3, size, size), dtype=np.float32)
    out[0] = _normalized_square(source, config, table)

    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)  # black padding
    canvas[place.pad_top : place.pad_top + place.height, place.pad_left : place.pad_left + place.width] = _resize(
        source, place.height, place.width, config
    )
    # The lookup reads each crop straight from the uint8 canvas and writes it in place in the
    # output, so the float data is written once; crop by crop, numpy's index buffer stays in cache.
    for index, (left, top, right, bottom) in enumerate(anyres.crop_boxes((canvas_h, canvas_w), size), start=1):
        _normalize_into(out[index], canvas[top:bottom, left:right], table)
    return ImageCrops(out, (height, width))


def base_only_crops(image: Image.Image | np.ndarray, config: ImageProcessingConfig) -> ImageCrops:
    """One crop `(1, 3, S, S)`: OneVision's multi-image preprocessing (pad to a mean-coloured square, resize)."""
    image = _rgb(image)
    padded = preprocess(
        image,
        ImageProcessingConfig(mode="pad", size=config.size, mean=config.mean, std=config.std, resample=config.resample),
    )
    return ImageCrops(padded[None], (image.height, image.width))


def preprocess_highres(
    image: Image.Image | np.ndarray, highres: HighResConfig, config: ImageProcessingConfig, base_only: bool = False
) -> ImageCrops:
    """One image in a grid mode: its crops (base first) or, `base_only`, the single padded base crop."""
    if config.size != highres.crop_size:
        raise ValueError(f"image size {config.size} differs from the high-resolution crop size {highres.crop_size}")
    return base_only_crops(image, config) if base_only else anyres_crops(image, highres, config)


def preprocess_highres_batch(
    images: list[Image.Image | np.ndarray],
    highres: HighResConfig,
    config: ImageProcessingConfig,
    base_only: bool = False,
    workers: int = 1,
) -> list[ImageCrops]:
    """`preprocess_highres` over several images, on `workers` threads (PIL's resize releases the GIL).

    One thread is the right choice inside data-loader worker processes, which already use the cores.
    """
    if workers <= 1 or len(images) < 2:
        return [preprocess_highres(image, highres, config, base_only) for image in images]
    with ThreadPoolExecutor(min(workers, len(images))) as pool:
        return list(pool.map(lambda image: preprocess_highres(image, highres, config, base_only), images))
