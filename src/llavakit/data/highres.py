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

The pixels equal transformers' `LlavaNextImageProcessor` / `LlavaOnevisionImageProcessor`
(tests/test_highres_processor.py) at a fraction of the time: normalisation is a lookup
table applied once to the canvas instead of float64 passes over every crop.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from llavakit.data.images import RESAMPLE_FILTERS, ImageProcessingConfig, preprocess
from llavakit.model import anyres

Size = tuple[int, int]


@dataclass(frozen=True)
class HighResConfig:
    """Image layout of the grid modes; built from the model config (`LlavaKitProcessor.from_model_config`).

    mode: `hd`, `anyres` or `anyres_max_N` (see `LlavaKitConfig.image_mode`).
    crop_size / patch_size: the encoder's input side and ViT patch.
    grid_pinpoints: the candidate canvases (height, width), each a whole number of crops.
    newline: features carry newline vectors (row ends; one after a base-only image).
    multi_image_base_only: a sample with several images encodes each at base resolution.
    """

    mode: str
    crop_size: int
    patch_size: int
    grid_pinpoints: tuple[Size, ...]
    newline: bool = True
    multi_image_base_only: bool = False

    def __post_init__(self):
        if self.mode not in ("hd", "anyres") and not self.mode.startswith("anyres_max_"):
            raise ValueError(f"high-resolution mode must be hd, anyres or anyres_max_N, got {self.mode!r}")
        if self.mode.startswith("anyres_max_"):
            anyres.parse_anyres_max(self.mode)
        anyres.tokens_per_side(self.crop_size, self.patch_size)
        pinpoints = tuple(anyres.parse_grid_pinpoints(list(self.grid_pinpoints), self.crop_size))
        for height, width in pinpoints:
            if height % self.crop_size or width % self.crop_size:
                raise ValueError(f"grid pinpoint {(height, width)} is not a whole number of {self.crop_size}-pixel crops")
        object.__setattr__(self, "grid_pinpoints", pinpoints)

    @property
    def base_tokens(self) -> int:
        """Features of one crop (the base image's count)."""
        return anyres.tokens_per_side(self.crop_size, self.patch_size) ** 2

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
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "crop_size": self.crop_size,
            "patch_size": self.patch_size,
            "grid_pinpoints": [list(p) for p in self.grid_pinpoints],
            "newline": self.newline,
            "multi_image_base_only": self.multi_image_base_only,
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


def resize_square(image: Image.Image | np.ndarray, config: ImageProcessingConfig, table: np.ndarray | None = None) -> np.ndarray:
    """(3, S, S): the whole image squashed to the encoder's input, as the base image and video frames are."""
    image = _rgb(image)
    size = config.size
    if image.size != (size, size):
        image = image.resize((size, size), resample=RESAMPLE_FILTERS[config.resample])
    out = np.empty((3, size, size), dtype=np.float32)
    _normalize_into(out, np.asarray(image), normalization_table(config) if table is None else table)
    return out


def anyres_crops(image: Image.Image | np.ndarray, highres: HighResConfig, config: ImageProcessingConfig) -> ImageCrops:
    """Base image + canvas crops `(1 + rows * cols, 3, S, S)` of one RGB image.

    Matches transformers' LLaVA-NeXT preprocessing: bicubic resize into the best canvas
    (aspect kept, the short side rounded up), black centred padding, row-major crops.
    """
    image = _rgb(image)
    size, resample = config.size, RESAMPLE_FILTERS[config.resample]
    height, width = image.height, image.width
    canvas_h, canvas_w = anyres.select_best_resolution((height, width), highres.grid_pinpoints)
    place = anyres.resize_and_pad_size((height, width), (canvas_h, canvas_w))
    table = normalization_table(config)
    out = np.empty((1 + (canvas_h // size) * (canvas_w // size), 3, size, size), dtype=np.float32)
    out[0] = resize_square(image, config, table)

    resized = image if image.size == (place.width, place.height) else image.resize((place.width, place.height), resample)
    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)  # black padding
    canvas[place.pad_top : place.pad_top + place.height, place.pad_left : place.pad_left + place.width] = np.asarray(resized)
    # The lookup reads each crop straight from the uint8 canvas and writes it in place in the
    # output, so the float data is written once; crop by crop, numpy's index buffer stays in cache.
    for index, (left, top, right, bottom) in enumerate(anyres.crop_boxes((canvas_h, canvas_w), size), start=1):
        _normalize_into(out[index], canvas[top:bottom, left:right], table)
    return ImageCrops(out, (height, width))


def base_only_crops(image: Image.Image | np.ndarray, config: ImageProcessingConfig) -> ImageCrops:
    """One crop `(1, 3, S, S)`: OneVision's multi-image preprocessing (pad to a mean-coloured square, resize)."""
    image = _rgb(image)
    padded = preprocess(image, ImageProcessingConfig(mode="pad", size=config.size, mean=config.mean, std=config.std, resample=config.resample))
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


def transformers_image_processor(highres: HighResConfig, config: ImageProcessingConfig):
    """The transformers image processor (PIL backend) that gives the same pixels and sizes:
    `LlavaOnevisionImageProcessorPil` for `anyres_max_N`, `LlavaNextImageProcessorPil` otherwise."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    size = config.size
    common = dict(
        image_grid_pinpoints=[list(p) for p in highres.grid_pinpoints],
        image_mean=list(config.mean),
        image_std=list(config.std),
        resample=int(RESAMPLE_FILTERS[config.resample]),
    )
    if highres.mode.startswith("anyres_max_"):
        return LlavaOnevisionImageProcessorPil(size={"height": size, "width": size}, **common)
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **common
    )
