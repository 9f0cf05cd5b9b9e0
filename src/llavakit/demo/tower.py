"""Pretrain the demo's vision tower on what each scene holds, instead of on its caption.

Why not CLIP: a batch of captions is told apart by colour, counts and the word, so the
contrastive loss never needs shape, and the tiny tower's tokens hold none (`docs/demo.md`).
Trained instead to say which object kinds, colours, categories (colour + kind), sizes and
word a scene holds (one binary label each, as ViTs were trained on ImageNet / JFT labels),
on the mean of the tokens LLaVA reads (layer -2), the tower puts shape as well as colour
into every token, where the LLM can read them. The scenes are fresh draws of the same world
(not the demo's held-out split), rendered in memory: thousands of distinct images are what this
tower needs to learn shape rather than memorise.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from llavakit.demo.backbones import LoopSettings, shuffled_batches, tower_image_config, train_loop
from llavakit.processing.images import normalise, resize_to_input
from llavakit.synthetic.world import COLOUR_RGB, KINDS, SIZES, Scene, WorldConfig, render_scene

FEATURE_LAYER = -2  # the layer LLaVA's connector reads: the labels shape what the LLM sees


@dataclass(frozen=True)
class SceneLabels:
    """The vocabulary of the binary labels: one per kind, colour, category, size and word."""

    kinds: tuple[str, ...] = KINDS
    colours: tuple[str, ...] = tuple(COLOUR_RGB)
    sizes: tuple[str, ...] = SIZES
    words: tuple[str, ...] = WorldConfig().words

    @cached_property
    def names(self) -> list[str]:
        """Kinds first (the loss weighs them on their own), then colours, categories, sizes, words."""
        categories = [f"{colour} {kind}" for colour in self.colours for kind in self.kinds]
        return [*self.kinds, *self.colours, *categories, *self.sizes, *(f"word {w}" for w in self.words)]

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def of(self, scene: Scene) -> np.ndarray:
        """1.0 for every label the scene holds; an unknown word or attribute is an error naming the scene."""
        index = self.index
        present = [name for obj in scene.objects for name in (obj.kind, obj.colour, obj.category, obj.size)]
        if scene.word is not None:
            present.append(f"word {scene.word.text}")
        unknown = sorted(set(present) - set(index))
        if unknown:
            raise ValueError(f"scene {scene.id!r}: labels {unknown} are not in the tower's vocabulary")
        labels = np.zeros(len(index), dtype=np.float32)
        labels[[index[name] for name in present]] = 1.0
        return labels


@dataclass
class TowerOutput:
    loss: torch.Tensor
    logits: torch.Tensor


class LabelledTower(nn.Module):
    """A CLIP vision tower with one linear head on the mean of its layer -2 patch tokens.

    The loss averages the binary cross-entropy over every label, scaled by `label_weight` so
    that labels a scene rarely holds still move the tower, and adds the average over the first
    `num_kinds` labels (the kinds, `SceneLabels.names`) times `kind_weight`: shape is the slowest
    attribute for this tower to learn.
    """

    def __init__(
        self, config: CLIPVisionConfig, num_labels: int, num_kinds: int, label_weight: float, kind_weight: float
    ):
        super().__init__()
        self.tower = CLIPVisionModel(config)
        self.head = nn.Linear(config.hidden_size, num_labels)
        self.num_kinds, self.label_weight, self.kind_weight = num_kinds, label_weight, kind_weight

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> TowerOutput:
        hidden = self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[FEATURE_LAYER]
        logits = self.head(hidden[:, 1:].mean(dim=1))  # patch tokens only, as LLaVA's default strategy
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        loss = self.label_weight * bce.mean() + self.kind_weight * bce[:, : self.num_kinds].mean()
        return TowerOutput(loss, logits)


def _label_batches(
    pixels: np.ndarray, labels: torch.Tensor, settings: LoopSettings
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of normalised pixels and labels; `pixels` are the uint8 images of `render_scenes`."""
    config = tower_image_config(pixels.shape[1])
    for indices in shuffled_batches(len(labels), settings.batch_size, random.Random(settings.seed)):
        yield dict(pixel_values=torch.from_numpy(normalise(pixels[indices], config)), labels=labels[indices])


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
    kind_weight: float = 3.0,
    label_weight: float = 10.0,
) -> CLIPVisionModel:
    """A tiny CLIP vision tower trained to name what each scene holds; returns the tower without its head."""
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
    model = LabelledTower(config, len(vocabulary.names), len(vocabulary.kinds), label_weight, kind_weight)
    train_loop(model, settings, _label_batches(pixels, labels, settings), "vision tower pretraining")
    return model.tower
