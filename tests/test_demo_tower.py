"""The demo's labelled vision tower: its labels are the scene's truth, and training beats the label prior."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llavakit.demo.backbones import LoopSettings, train_loop
from llavakit.demo.settings import DemoSettings
from llavakit.demo.tower import (
    LabelledTower,
    LabelWeights,
    SceneLabels,
    _label_batches,
    pretrain_labelled_tower,
    render_pixels,
    render_scenes,
)
from llavakit.processing.images import CLIP_MEAN, CLIP_STD, ImageProcessingConfig, preprocess
from llavakit.synthetic.world import Scene, SceneObject, SceneWord, generate_world, render_scene


def _scene(word: str | None = "CAT") -> Scene:
    objects = (
        SceneObject("circle", "red", "small", (2, 2, 11, 11), "top left"),
        SceneObject("circle", "blue", "large", (30, 30, 19, 19), "bottom right"),
        SceneObject("circle", "red", "small", (40, 40, 11, 11), "bottom right"),
        SceneObject("square", "red", "small", (2, 40, 11, 11), "bottom left"),
    )
    written = SceneWord(word, (40, 4, 17, 7), "top right", "black") if word else None
    return Scene(64, 64, "white", objects, written, "s1")


def test_labels_name_exactly_what_the_scene_holds():
    vocabulary = SceneLabels()
    labels = vocabulary.of(_scene())
    held = {name for name, value in zip(vocabulary.names, labels) if value == 1.0}
    present = {"circle", "square", "red", "blue", "red circle", "blue circle", "red square", "small", "large"}
    counted = {"at least 2 circle", "at least 3 circle", "at least 2 red circle"}
    assert held == present | counted | {"word CAT"}
    assert labels.sum() == len(held) and len(labels) == len(vocabulary.names) == len(set(vocabulary.names))
    assert "word CAT" not in {n for n, v in zip(vocabulary.names, vocabulary.of(_scene(None))) if v}


def test_an_unknown_word_names_the_scene():
    with pytest.raises(ValueError, match=r"scene 's1'.*word ZEBRA"):
        SceneLabels().of(_scene("ZEBRA"))


def test_negative_label_weights_are_refused():
    with pytest.raises(ValueError, match=r"label weights must be >= 0, got \{'counts': -1.0\}"):
        LabelWeights(counts=-1.0)
    with pytest.raises(ValueError, match=r"label weights must be >= 0, got \{'tower_count_weight': -2.0\}"):
        DemoSettings(tower_count_weight=-2.0)


def test_unknown_pretraining_is_refused():
    with pytest.raises(ValueError, match=r"unknown vision_pretraining 'dino'.*labels, clip"):
        DemoSettings(vision_pretraining="dino")


def test_counts_are_ordinal_up_to_the_worlds_most_objects():
    vocabulary = SceneLabels()
    counts = vocabulary.names[len(vocabulary.presence) :]
    things = len(vocabulary.kinds) + len(vocabulary.categories)
    assert len(counts) == things * (vocabulary.max_count - 1)
    assert counts[:2] == ["at least 2 circle", "at least 3 circle"]
    ks = range(2, vocabulary.max_count + 1)
    for scene in generate_world(50, seed=4):
        labels = dict(zip(vocabulary.names, vocabulary.of(scene)))
        for kind in vocabulary.kinds:
            n = sum(obj.kind == kind for obj in scene.objects)
            assert [labels[f"at least {k} {kind}"] for k in ks] == [float(n >= k) for k in ks]
    capped = SceneLabels(max_count=2).of(_scene())  # three circles: "at least 2", nothing past the vocabulary
    assert capped[SceneLabels(max_count=2).index["at least 2 circle"]] == 1.0


def test_loss_weighs_each_label_group():
    vocabulary = SceneLabels()
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    labels = torch.from_numpy(np.stack([vocabulary.of(scene) for scene in generate_world(8, seed=5)]))
    logits = torch.zeros_like(labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    presence, kinds = len(vocabulary.presence), len(vocabulary.kinds)
    for weights in (LabelWeights(), LabelWeights(presence=1.0, kinds=0.0, counts=0.0), LabelWeights(counts=2.5)):
        expected = (
            weights.presence * bce[:, :presence].mean()
            + weights.kinds * bce[:, :kinds].mean()
            + weights.counts * bce[:, presence:].mean()
        )
        loss = LabelledTower(config, vocabulary, weights).label_loss(logits, labels)
        torch.testing.assert_close(loss, expected)


def _prior_loss(labels: torch.Tensor, model: LabelledTower) -> float:
    """The tower's loss for a constant guess of each label's frequency: what it must beat."""
    p = labels.mean(dim=0, keepdim=True).clamp(1e-4, 1 - 1e-4).expand_as(labels)
    return model.label_loss(torch.log(p / (1 - p)), labels).item()


def test_training_learns_more_than_the_label_frequencies():
    torch.manual_seed(0)
    scenes = generate_world(256, seed=3)
    vocabulary = SceneLabels()
    labels = torch.from_numpy(np.stack([vocabulary.of(scene) for scene in scenes]))
    images, pixels = render_scenes(scenes, 32), render_pixels(scenes, 32)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    model = LabelledTower(config, vocabulary, LabelWeights())
    settings = LoopSettings(steps=400, batch_size=32, lr=5e-3)
    train_loop(model, settings, _label_batches(images, labels, settings), "test tower")
    with torch.no_grad():
        trained = model(pixel_values=pixels, labels=labels).loss.item()
    assert trained < 0.8 * _prior_loss(labels, model), (trained, _prior_loss(labels, model))


def test_stored_scenes_give_the_processors_pixels():
    """The tower keeps uint8 images and normalises each batch; that must equal `preprocess` exactly."""
    scenes = generate_world(6, seed=2)
    images = render_scenes(scenes, 48)
    assert images.dtype == np.uint8 and images.shape == (6, 48, 48, 3)
    config = ImageProcessingConfig(mode="square", size=48, mean=CLIP_MEAN, std=CLIP_STD)
    expected = np.stack([preprocess(render_scene(scene), config) for scene in scenes])
    np.testing.assert_array_equal(render_pixels(scenes, 48).numpy(), expected)
    batch = next(_label_batches(images, torch.zeros(6, 3), LoopSettings(steps=1, batch_size=6, lr=1e-3)))
    order = [int(np.flatnonzero((expected == row.numpy()).all(axis=(1, 2, 3)))[0]) for row in batch["pixel_values"]]
    assert sorted(order) == list(range(6))


def test_pretrained_tower_is_a_clip_vision_model_that_reloads(tmp_path):
    scenes = generate_world(16, seed=1)
    tower = pretrain_labelled_tower(scenes, 32, 8, 32, 1, LoopSettings(steps=3, batch_size=8, lr=1e-3))
    assert isinstance(tower, CLIPVisionModel) and tower.config.image_size == 32
    tower.save_pretrained(tmp_path)
    pixels = render_pixels(scenes[:2], 32)
    with torch.no_grad():
        before = tower(pixel_values=pixels).last_hidden_state
        after = CLIPVisionModel.from_pretrained(tmp_path)(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(before, after)
    assert dataclasses.asdict(DemoSettings())["vision_pretraining"] == "labels"


def test_too_few_scenes_for_a_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one batch of scenes: 4 < 8"):
        pretrain_labelled_tower(generate_world(4, seed=1), 32, 8, 32, 1, LoopSettings(steps=1, batch_size=8, lr=1e-3))
