"""LLaVA-1.5-HD in the demo: the tower learns the word on the very crops the model's processor cuts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig

from llavakit.demo.backbones import LoopSettings, tower_image_config, train_loop
from llavakit.demo.pipeline import run_demo, word_crop_layout
from llavakit.demo.settings import DemoSettings, preset
from llavakit.demo.tile_words import PARTIAL, TileWords, crop_word_labels, tile_batches, tile_words
from llavakit.demo.tower import LabelledTower, LabelWeights, SceneLabels, _label_batches, _with_tiles, render_scenes
from llavakit.processing.highres import HighResConfig, anyres_crops
from llavakit.serve.chat import load_chat_model
from llavakit.synthetic.world import Scene, SceneWord, WorldConfig, generate_world, render_scene

WORDS = SceneLabels().words
NONE = len(WORDS)
HIGHRES = HighResConfig(mode="anyres", crop_size=64, patch_size=8, grid_pinpoints=((128, 128),))


def _word_scene(x: int, y: int, text: str = "CAT") -> Scene:
    return Scene(64, 64, "white", (), SceneWord(text, (x, y, 17, 7), "top right", "black"), "w1")


def test_a_crop_is_labelled_with_the_word_only_when_it_holds_all_of_it():
    cat = WORDS.index("CAT")
    # (40, 4) to (57, 11) doubles to (80, 8)-(114, 22): inside the top-right crop, row-major index 1
    assert crop_word_labels(_word_scene(40, 4), HIGHRES, WORDS) == [NONE, cat, NONE, NONE]
    # (25, 4) to (42, 11) doubles to (50, 8)-(84, 22): it crosses x = 64, so both top crops hold part of it
    assert crop_word_labels(_word_scene(25, 4), HIGHRES, WORDS) == [PARTIAL, PARTIAL, NONE, NONE]
    # touching the crop's edge from inside is inside: (32, 50) doubles to (64, 100)-(98, 114)
    assert crop_word_labels(_word_scene(32, 50), HIGHRES, WORDS) == [NONE, NONE, NONE, cat]
    without = Scene(64, 64, "white", (), None, "w2")
    assert crop_word_labels(without, HIGHRES, WORDS) == [NONE] * 4


def test_an_unknown_word_is_an_error_naming_the_scene():
    with pytest.raises(ValueError, match=r"scene 'w1': word 'ZZZ' is not one of the tower's words"):
        crop_word_labels(_word_scene(40, 4, "ZZZ"), HIGHRES, WORDS)


def test_the_kept_crops_are_the_processors_crops_with_their_labels():
    scenes = generate_world(40, seed=3, config=WorldConfig(text_prob=1.0))
    image_config = tower_image_config(64)
    tiles = tile_words(scenes, HIGHRES, image_config, WORDS, none_per_word=0.5, seed=0)
    whole = [(i, j, label) for i, s in enumerate(scenes) for j, label in enumerate(crop_word_labels(s, HIGHRES, WORDS))]
    with_word = [(i, j, label) for i, j, label in whole if label not in (NONE, PARTIAL)]
    assert 0 < len(with_word) < len(scenes)  # some words cross a crop edge and are left out
    assert (tiles.labels < NONE).sum().item() == len(with_word)
    assert (tiles.labels == NONE).sum().item() == round(0.5 * len(with_word))
    assert not (tiles.labels == PARTIAL).any()
    for row, (i, j, label) in enumerate(with_word[:3]):
        crops = anyres_crops(render_scene(scenes[i]), HIGHRES, image_config).pixel_values
        np.testing.assert_array_equal(tiles.pixels[row].numpy(), crops[1 + j])
        assert tiles.labels[row].item() == label == WORDS.index(scenes[i].word.text)
    batch = next(tile_batches(tiles, 8, seed=0))
    assert batch["tile_values"].shape == (8, 3, 64, 64) and batch["tile_labels"].shape == (8,)


def test_crop_batches_show_every_crop_once_an_epoch():
    n = 20  # crop i is filled with i, so a batch's crops can be told apart by their pixels
    tiles = TileWords(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4), torch.arange(n), WORDS)
    batches = tile_batches(tiles, 6, seed=0)
    for _ in range(2):
        epoch = [next(batches) for _ in range(n // 6)]  # the 2 crops left over wait for the next epoch
        shown = torch.cat([b["tile_values"][:, 0, 0, 0] for b in epoch]).long()
        assert len(set(shown.tolist())) == len(shown) == 18
        assert torch.equal(torch.cat([b["tile_labels"] for b in epoch]), shown)
    few = next(tile_batches(TileWords(tiles.pixels[:3], tiles.labels[:3], WORDS), 6, seed=0))
    assert sorted(few["tile_labels"].tolist()) == [0, 1, 2]


def test_scenes_without_a_whole_word_in_a_crop_are_refused():
    with pytest.raises(ValueError, match=r"none of the 1 scenes has a word inside one crop"):
        tile_words([_word_scene(25, 4)], HIGHRES, tower_image_config(64), WORDS, 1.0, seed=0)


def test_settings_refuse_crops_the_demo_does_not_cut():
    with pytest.raises(ValueError, match=r"tower_tile_batch needs the high-resolution crops .*hd_grid=1"):
        DemoSettings(tower_tile_batch=8)
    with pytest.raises(ValueError, match=r"tower_tile_batch needs .*vision_pretraining='clip'"):
        DemoSettings(hd_grid=2, tower_tile_batch=8, vision_pretraining="clip")
    with pytest.raises(ValueError, match=r"hd_grid must be >= 1"):
        DemoSettings(hd_grid=0)
    with pytest.raises(ValueError, match=r"no high-resolution crops with hd_grid=1"):
        word_crop_layout(DemoSettings())
    assert preset("hd").grid_pinpoints == [[128, 128]] and DemoSettings().grid_pinpoints is None


def test_training_on_the_crops_learns_the_word_beyond_its_frequencies():
    torch.manual_seed(0)
    highres = HighResConfig(mode="anyres", crop_size=32, patch_size=4, grid_pinpoints=((64, 64),))
    word_scenes = generate_world(300, seed=4, config=WorldConfig(text_prob=1.0))
    tiles = tile_words(word_scenes, highres, tower_image_config(32), WORDS, none_per_word=0.3, seed=0)
    scenes = generate_world(16, seed=5)
    vocabulary = SceneLabels()
    labels = torch.from_numpy(np.stack([vocabulary.of(scene) for scene in scenes]))
    config = CLIPVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=4
    )
    model = LabelledTower(config, vocabulary, LabelWeights(presence=0.0, kinds=0.0, counts=0.0), tile_words=True)
    settings = LoopSettings(steps=150, batch_size=4, lr=3e-3)
    batches = _with_tiles(_label_batches(render_scenes(scenes, 32), labels, settings), tile_batches(tiles, 32, 0))
    train_loop(model, settings, batches, "test word tower")
    with torch.no_grad():
        logits = model.word_head(model.mean_token(tiles.pixels))
    trained = torch.nn.functional.cross_entropy(logits, tiles.labels).item()
    frequencies = torch.bincount(tiles.labels, minlength=NONE + 1).float() / len(tiles.labels)
    prior = -(frequencies[frequencies > 0] * frequencies[frequencies > 0].log()).sum().item()
    assert trained < 0.7 * prior < math.log(NONE + 1), (trained, prior)


def test_the_hd_demo_cuts_the_crops_its_tower_learned_from(tmp_path):
    """A tiny run of the `hd` preset: the saved model is LLaVA-1.5-HD's layout with MM1's pooling, and
    its processor cuts each image exactly as the crops the tower learned the word from."""
    settings = preset("hd").replace(
        scenes=100,
        tower_scenes=200,
        tower_steps=4,
        tower_word_scenes=60,
        lm_steps=3,
        stage1_epochs=0.1,
        stage2_epochs=0.1,
        eval_per_set=8,
    )
    result = run_demo(tmp_path / "demo", settings)
    model, processor = load_chat_model(result.model_dir)
    config = model.config
    assert (config.image_mode, config.connector, config.connector_tokens) == ("anyres", "avg_pool", 16)
    highres, image_config = word_crop_layout(settings)
    assert processor.highres.grid_pinpoints == highres.grid_pinpoints == ((128, 128),)
    assert processor.image_token_count((64, 64)) == 16 + 8 * 8 + 8  # the whole image, 2 x 2 crops of 4 x 4, row ends
    scene = generate_world(1, seed=8, config=WorldConfig(text_prob=1.0))[0]
    by_processor = anyres_crops(render_scene(scene), processor.highres, processor.image_config).pixel_values
    np.testing.assert_array_equal(by_processor, anyres_crops(render_scene(scene), highres, image_config).pixel_values)
    assert set(result.results) == {"vqa", "counting", "ocr", "region", "pope"}
    assert all(r["metrics"]["n"] > 0 for r in result.results.values())
