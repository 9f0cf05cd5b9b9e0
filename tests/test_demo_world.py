"""The demo's text side: the LM's corpus is the chat the model will read, with each image told in words."""

from __future__ import annotations

import json

import pytest

from llavakit.demo.pipeline import STAGE2_TEMPLATE, run_demo
from llavakit.demo.settings import preset
from llavakit.demo.world import make_tokenizer, make_world
from llavakit.processing.templates import get_template
from llavakit.synthetic.world import describe, load_scenes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), preset("quick").replace(scenes=30))


def test_lm_corpus_is_the_chat_with_scenes_described(world):
    texts = world.texts(STAGE2_TEMPLATE)
    records = json.loads(world.pretrain.read_text()) + json.loads(world.instruct.read_text())
    assert len(texts) == len(records)
    scenes = {scene.image: scene for scene in load_scenes(world.train_scenes)}
    system = get_template(STAGE2_TEMPLATE).system
    for text, record in zip(texts, records):
        assert text.startswith(system) and "<image>" not in text
        assert describe(scenes[record["image"]]) in text
        assert text.endswith("</s>")
    test_images = {scene.image for scene in load_scenes(world.test_scenes)}
    assert not test_images & {record["image"] for record in records}


def test_tokenizer_reads_the_template_in_words(world):
    tokenizer = make_tokenizer(world.texts(STAGE2_TEMPLATE), preset("quick"))
    system = get_template(STAGE2_TEMPLATE).system
    words = len(system.split())
    # Every word of the system prompt is one token (plus its punctuation), not one per letter.
    assert len(tokenizer(system, add_special_tokens=False)["input_ids"]) <= words + 8
    assert tokenizer.tokenize(" ASSISTANT:") == ["ĠASSISTANT", ":"]


def test_stage2_trains_on_the_settings_kinds_from_training_images_only(world):
    settings = preset("quick")
    records = json.loads(world.stage2.read_text())
    train_images = [scene.image for scene in load_scenes(world.train_scenes)]
    assert len(records) == settings.stage2_per_image * len(train_images)
    assert {record["image"] for record in records} == set(train_images)
    assert {record["id"].split("-")[1] for record in records} == set(settings.stage2_kinds)


@pytest.mark.parametrize("vision_pretraining", ["labels", "clip"])
def test_backbones_are_the_same_whatever_the_process_random_state(world, tmp_path, vision_pretraining):
    """Each backbone draws its weights from the recipe's seed: a process starts from a random torch seed,
    and the ablation builds the language model and the vision towers in separate calls."""
    import torch
    from safetensors.torch import load_file

    from llavakit.demo.pipeline import pretrain_language, pretrain_vision_tower

    settings = preset("quick").replace(
        vocab_size=320,
        vision_pretraining=vision_pretraining,
        tower_scenes=8,
        tower_steps=2,
        clip_steps=2,
        clip_batch=4,
        lm_steps=2,
        lm_batch=2,
        lm_context=32,
        vision_hidden=32,
        vision_layers=1,
        text_hidden=32,
        text_layers=1,
    )
    tokenizer = make_tokenizer(world.texts(STAGE2_TEMPLATE), settings)
    weights = []
    for run, unrelated_seed in enumerate((1, 2)):
        torch.manual_seed(unrelated_seed)
        pretrain_language(tmp_path / str(run), world, settings, tokenizer)
        torch.manual_seed(unrelated_seed + 10)
        pretrain_vision_tower(tmp_path / str(run), world, settings, tokenizer)
        weights.append(
            {name: load_file(tmp_path / str(run) / name / "model.safetensors") for name in ("language", "clip")}
        )
    for name in ("language", "clip"):
        first, second = weights[0][name], weights[1][name]
        assert first.keys() == second.keys()
        for key in first:
            torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=f"{name}: {key}")


@pytest.mark.parametrize("text_prob", [0.0, 1.0])
def test_text_prob_decides_which_scenes_hold_a_word(tmp_path, text_prob):
    world = make_world(tmp_path, preset("quick").replace(scenes=20, text_prob=text_prob))
    scenes = load_scenes(world.train_scenes) + load_scenes(world.test_scenes)
    assert len(scenes) == 20
    assert all((scene.word is not None) == (text_prob == 1.0) for scene in scenes)
    ocr = [r for r in json.loads(world.stage2.read_text()) if "What word is written" in json.dumps(r)]
    assert bool(ocr) == (text_prob == 1.0)


@pytest.mark.parametrize("text_prob", [-0.1, 1.5])
def test_a_text_prob_outside_zero_to_one_is_refused_before_any_work(tmp_path, text_prob):
    earlier = tmp_path / "demo"
    earlier.mkdir()
    (earlier / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match=r"WorldConfig.text_prob must be in \[0, 1\]"):
        run_demo(earlier, preset("quick").replace(text_prob=text_prob), overwrite=True)
    assert (earlier / "summary.json").read_text() == "{}"  # the settings are refused before the folder is emptied
