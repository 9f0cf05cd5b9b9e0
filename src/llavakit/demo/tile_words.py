"""The word as the high-resolution crops show it: what the demo's tower learns for LLaVA-1.5-HD.

The world's word is drawn 17 x 6 pixels in a 64 px image, letters about 5 pixels wide: an 8 px
patch cannot tell them apart (`docs/demo.md`). In the grid modes the processor upscales the
image onto a canvas and cuts it into crops of the tower's size, so each crop's 8 px patch covers
4 px of the original. Trained to name the word on those crops, the same tower names 81 % of
held-out words in 108 s (trained on whole images at 8 px: 24 %; with 4 px patches: 87 % in
286 s), because each step looks at 64-token crops instead of 256-token images.

Each crop is labelled with the word when it holds all of the word's box, "none" when it holds
none of it, and left out when the word crosses its edge: half a word is neither.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llavakit.demo.backbones import shuffled_batches
from llavakit.model import anyres
from llavakit.processing.highres import HighResConfig, anyres_crops
from llavakit.processing.images import ImageProcessingConfig
from llavakit.synthetic.world import Box, Scene, render_scene

PARTIAL = -100  # cross_entropy's ignore_index: a crop the word's edge cuts through


@dataclass(frozen=True)
class TileWords:
    """Crops `(n, 3, S, S)` normalised as the processor gives them, and each one's word index
    (`len(words)` for "none"); the crops cut through by the word are not kept."""

    pixels: torch.Tensor
    labels: torch.Tensor
    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.pixels) != len(self.labels) or not len(self.labels):
            raise ValueError(f"TileWords needs one label per crop and at least one crop, got {len(self.labels)}")


def _scaled_box(box: Box, image_size: tuple[int, int], canvas: tuple[int, int]) -> tuple[float, float, float, float]:
    """The word's `(x, y, w, h)` box as `(left, top, right, bottom)` on the grid canvas."""
    place = anyres.resize_and_pad_size(image_size, canvas)
    sx, sy = place.width / image_size[1], place.height / image_size[0]
    x, y, w, h = box
    return place.pad_left + x * sx, place.pad_top + y * sy, place.pad_left + (x + w) * sx, place.pad_top + (y + h) * sy


def crop_word_labels(scene: Scene, highres: HighResConfig, words: Sequence[str]) -> list[int]:
    """Per grid crop (row-major, as `anyres_crops` cuts them): the word's index, "none", or `PARTIAL`."""
    size = (scene.height, scene.width)
    canvas = anyres.select_best_resolution(size, highres.grid_pinpoints)
    boxes = anyres.crop_boxes(canvas, highres.crop_size)
    if scene.word is None:
        return [len(words)] * len(boxes)
    if scene.word.text not in words:
        raise ValueError(f"scene {scene.id!r}: word {scene.word.text!r} is not one of the tower's words {list(words)}")
    left, top, right, bottom = _scaled_box(scene.word.box, size, canvas)
    labels = []
    for c_left, c_top, c_right, c_bottom in boxes:
        inside = left >= c_left and top >= c_top and right <= c_right and bottom <= c_bottom
        touches = left < c_right and right > c_left and top < c_bottom and bottom > c_top
        labels.append(words.index(scene.word.text) if inside else PARTIAL if touches else len(words))
    return labels


def tile_words(
    scenes: Sequence[Scene],
    highres: HighResConfig,
    image_config: ImageProcessingConfig,
    words: Sequence[str],
    none_per_word: float,
    seed: int,
) -> TileWords:
    """Every crop that holds a whole word, and `none_per_word` crops without one for each of them.

    The labels come from the scenes' geometry, so only the crops kept are rendered and held.
    """
    with_word: list[tuple[int, int, int]] = []  # (scene, crop, word index)
    without: list[tuple[int, int, int]] = []
    for i, scene in enumerate(scenes):
        for j, label in enumerate(crop_word_labels(scene, highres, words)):
            if label == len(words):
                without.append((i, j, label))
            elif label != PARTIAL:
                with_word.append((i, j, label))
    if not with_word:
        raise ValueError(f"none of the {len(scenes)} scenes has a word inside one crop: the tower has no word to learn")
    kept = with_word + random.Random(seed).sample(without, min(len(without), round(len(with_word) * none_per_word)))
    by_scene: dict[int, list[int]] = {}
    for row, (i, _, _) in enumerate(kept):
        by_scene.setdefault(i, []).append(row)
    pixels = np.empty((len(kept), 3, image_config.size, image_config.size), dtype=np.float32)
    for i, rows in by_scene.items():
        crops = anyres_crops(render_scene(scenes[i]), highres, image_config).pixel_values
        for row in rows:
            pixels[row] = crops[1 + kept[row][1]]  # crop 0 is the whole image
    return TileWords(torch.from_numpy(pixels), torch.tensor([label for _, _, label in kept]), tuple(words))


def tile_batches(tiles: TileWords, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless epoch-shuffled batches of crops and their word labels: each crop once an epoch
    (a set smaller than a batch is one batch of all of it)."""
    size = min(batch_size, len(tiles.labels))
    for chosen in shuffled_batches(len(tiles.labels), size, random.Random(seed)):
        yield dict(tile_values=tiles.pixels[chosen], tile_labels=tiles.labels[chosen])
