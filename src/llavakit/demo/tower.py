"""Pretrain the demo's vision tower on what each scene holds, instead of on its caption.

Why not CLIP: a batch of captions is told apart by colour, counts and the word, so the
contrastive loss never needs shape, and the tiny tower's tokens hold none (`docs/demo.md`).
Trained instead to say which object kinds, colours, categories (colour + kind), sizes and
word a scene holds (one binary label each, as ViTs were trained on ImageNet / JFT labels),
and how many of each kind and category (ordinal labels: "at least k"), on the mean of the
tokens LLaVA reads (layer -2), the tower puts shape as well as colour into every token,
where the LLM can read them. The scenes are fresh draws of the same world
(not the demo's held-out split), rendered in memory: thousands of distinct images are what this
tower needs to learn shape rather than memorise.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from llavakit.demo.backbones import LoopSettings, shuffled_batches, tower_image_config, train_loop
from llavakit.demo.settings import refuse_negative_weights
from llavakit.demo.tile_words import TileWords, tile_batches
from llavakit.processing.images import normalise, resize_to_input
from llavakit.synthetic.world import COLOUR_RGB, KINDS, SIZES, Scene, WorldConfig, render_scene

FEATURE_LAYER = -2  # the layer LLaVA's connector reads: the labels shape what the LLM sees


@dataclass(frozen=True)
class SceneLabels:
    """The vocabulary of the binary labels: one per kind, colour, category, size and word, then the
    counts: "at least k" of each kind and category for k = 2 .. `max_count` (k = 1 is presence)."""

    kinds: tuple[str, ...] = KINDS
    colours: tuple[str, ...] = tuple(COLOUR_RGB)
    sizes: tuple[str, ...] = SIZES
    words: tuple[str, ...] = WorldConfig().words
    max_count: int = WorldConfig().max_objects

    @cached_property
    def categories(self) -> list[str]:
        return [f"{colour} {kind}" for colour in self.colours for kind in self.kinds]

    @cached_property
    def presence(self) -> list[str]:
        """Kinds first (the loss weighs them on their own), then colours, categories, sizes, words."""
        return [*self.kinds, *self.colours, *self.categories, *self.sizes, *(f"word {w}" for w in self.words)]

    @cached_property
    def names(self) -> list[str]:
        """The presence labels, then the count labels (the loss weighs each group on its own)."""
        counted = [*self.kinds, *self.categories]
        return [*self.presence, *(f"at least {k} {thing}" for thing in counted for k in range(2, self.max_count + 1))]

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def of(self, scene: Scene) -> np.ndarray:
        """1.0 for every label the scene holds; an unknown word or attribute is an error naming the scene."""
        index = self.index
        present = [name for obj in scene.objects for name in (obj.kind, obj.colour, obj.category, obj.size)]
        if scene.word is not None:
            present.append(f"word {scene.word.text}")
        counts = Counter(name for obj in scene.objects for name in (obj.kind, obj.category))
        top = self.max_count  # "at least max_count" still holds for more
        present += [f"at least {k} {thing}" for thing, n in counts.items() for k in range(2, min(n, top) + 1)]
        unknown = sorted(set(present) - index.keys())
        if unknown:
            raise ValueError(f"scene {scene.id!r}: labels {unknown} are not in the tower's vocabulary")
        labels = np.zeros(len(index), dtype=np.float32)
        labels[[index[name] for name in present]] = 1.0
        return labels


@dataclass
class TowerOutput:
    loss: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class LabelWeights:
    """How much each group of labels weighs in the tower's loss (each group's mean binary cross-entropy).

    `presence` scales every presence label, so that labels a scene rarely holds still move the
    tower; `kinds` adds the kinds again, shape being the slowest attribute for it to learn;
    `counts` scales the count labels; `tile_words` the cross-entropy of the word over the
    high-resolution crops, when the tower learns them (`llavakit.demo.tile_words`).
    """

    presence: float = 10.0
    kinds: float = 3.0
    counts: float = 10.0
    tile_words: float = 1.0

    def __post_init__(self) -> None:
        refuse_negative_weights(dataclasses.asdict(self))


class LabelledTower(nn.Module):
    """A CLIP vision tower with one linear head on the mean of its layer -2 patch tokens; with
    `tile_words`, a second head names the word (or "none") of a high-resolution crop."""

    def __init__(
        self, config: CLIPVisionConfig, vocabulary: SceneLabels, weights: LabelWeights, tile_words: bool = False
    ):
        super().__init__()
        self.tower = CLIPVisionModel(config)
        self.head = nn.Linear(config.hidden_size, len(vocabulary.names))
        self.word_head = nn.Linear(config.hidden_size, len(vocabulary.words) + 1) if tile_words else None
        self.num_kinds, self.num_presence, self.weights = len(vocabulary.kinds), len(vocabulary.presence), weights

    def label_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        presence, counts = bce[:, : self.num_presence], bce[:, self.num_presence :]
        loss = self.weights.presence * presence.mean() + self.weights.kinds * presence[:, : self.num_kinds].mean()
        return loss + self.weights.counts * counts.mean() if counts.numel() else loss

    def mean_token(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[FEATURE_LAYER]
        return hidden[:, 1:].mean(dim=1)  # patch tokens only, as LLaVA's default strategy

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor,
        tile_values: torch.Tensor | None = None,
        tile_labels: torch.Tensor | None = None,
    ) -> TowerOutput:
        logits = self.head(self.mean_token(pixel_values))
        loss = self.label_loss(logits, labels)
        if tile_values is not None:
            if self.word_head is None:
                raise ValueError("this tower was built without a word head (tile_words=False)")
            word_logits = self.word_head(self.mean_token(tile_values))
            loss = loss + self.weights.tile_words * nn.functional.cross_entropy(word_logits, tile_labels)
        return TowerOutput(loss, logits)


def _label_batches(
    pixels: np.ndarray, labels: torch.Tensor, settings: LoopSettings
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of normalised pixels and labels; `pixels` are the uint8 images of `render_scenes`."""
    config = tower_image_config(pixels.shape[1])
    for indices in shuffled_batches(len(labels), settings.batch_size, random.Random(settings.seed)):
        yield dict(pixel_values=torch.from_numpy(normalise(pixels[indices], config)), labels=labels[indices])


def _with_tiles(
    scenes: Iterator[dict[str, torch.Tensor]], tiles: Iterator[dict[str, torch.Tensor]]
) -> Iterator[dict[str, torch.Tensor]]:
    for batch in scenes:
        yield batch | next(tiles)


def render_scenes(scenes: Sequence[Scene], image_size: int) -> np.ndarray:
    """The scenes drawn in memory at the tower's input size, uint8 (n, size, size, 3): 9,500 scenes of
    64 px hold 117 MB, where normalised float32 would take 470 MB."""
    config = tower_image_config(image_size)
    return np.stack([resize_to_input(render_scene(scene), config) for scene in scenes])


def render_pixels(scenes: Sequence[Scene], image_size: int) -> torch.Tensor:
    """The scenes as the demo's processor gives them to the tower: normalised float32 (n, 3, size, size)."""
    return torch.from_numpy(normalise(render_scenes(scenes, image_size), tower_image_config(image_size)))


def pretrain_labelled_tower(
    scenes: Sequence[Scene],
    image_size: int,
    patch_size: int,
    hidden_size: int,
    num_layers: int,
    settings: LoopSettings,
    weights: LabelWeights = LabelWeights(),
    tiles: TileWords | None = None,
    tile_batch: int = 32,
) -> CLIPVisionModel:
    """A tiny CLIP vision tower trained to name what each scene holds and, given `tiles`, the word of
    `tile_batch` high-resolution crops a step beside them; returns the tower without its heads."""
    if len(scenes) < settings.batch_size:
        raise ValueError(f"the tower needs at least one batch of scenes: {len(scenes)} < {settings.batch_size}")
    torch.manual_seed(settings.seed)
    vocabulary = SceneLabels()
    labels = torch.from_numpy(np.stack([vocabulary.of(scene) for scene in scenes]))
    pixels = render_scenes(scenes, image_size)
    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    model = LabelledTower(config, vocabulary, weights, tile_words=tiles is not None)
    batches = _label_batches(pixels, labels, settings)
    if tiles is not None:
        if tiles.words != vocabulary.words:
            raise ValueError(f"the crops' words {tiles.words} differ from the tower's {vocabulary.words}")
        batches = _with_tiles(batches, tile_batches(tiles, tile_batch, settings.seed))
    train_loop(model, settings, batches, "vision tower pretraining")
    return model.tower
