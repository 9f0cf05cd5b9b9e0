"""Two tiny LLaVA stages on synthetic colour data: the loss falls, each stage leaves what it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel, LlamaForCausalLM

from conftest import COLOURS, Sample, WeightSnapshots, conversation, tiny_recipe, write_llava_data
from llavakit import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import build_tiny_tokenizer, tiny_text_config
from llavakit.train.config import load_config
from llavakit.train.run import CONFIG_NAME, LOSS_PLOT_NAME, run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = (40, 32)  # width, height of every image
QUESTION = "<image>\nWhat color is the picture?"


def colour_world(folder: Path, n: int) -> tuple[Path, Path]:
    """Solid-colour images: stage-1 captions are the colour word, stage-2 answers name it in a sentence."""
    names = [list(COLOURS)[i % len(COLOURS)] for i in range(n)]
    captions = [Sample(f"c{i}", "<image>", name, f"{i}.png", COLOURS[name], SIZE) for i, name in enumerate(names)]
    # the questions ask about the captions' images (drawn once, by the captions)
    questions = [Sample(f"q{i}", QUESTION, f"The picture is {name}.", f"{i}.png") for i, name in enumerate(names)]
    return write_llava_data(folder, captions, "captions.json"), write_llava_data(folder, questions, "questions.json")


def answer_ranking(model, processor: LlavaKitProcessor, image: Image.Image) -> list[str]:
    """The four colour answers, likeliest first (mean token loss of each answer given the image)."""
    losses = {}
    for colour in COLOURS:
        encoded = processor.encode_conversation(conversation(QUESTION, f"The picture is {colour}."), images=[image])
        with torch.no_grad():
            losses[colour] = model(
                input_ids=encoded["input_ids"][None],
                pixel_values=encoded["pixel_values"],
                labels=encoded["labels"][None],
            ).loss.item()
    return sorted(losses, key=losses.get)


def mean(values) -> float:
    return sum(values) / len(values)


def test_stage1_then_stage2_on_colours(tmp_path):
    captions, questions = colour_world(tmp_path / "world", 48)
    common = ["optimization.epochs=3", "output.save_total_limit=2"]
    stage1 = run_training(tiny_recipe("pretrain", captions, tmp_path / "stage1", "output.save_steps=6", *common))
    watch = WeightSnapshots()
    stage2 = run_training(
        tiny_recipe(
            "finetune",
            questions,
            tmp_path / "stage2",
            "output.save_steps=0",
            f"model.connector_weights={stage1.output_dir}",
            *common,
        ),
        callbacks=[watch],
    )

    # the loss falls clearly in both stages (18 optimizer steps each: 48 samples x 3 epochs / 8)
    for result, drop in ((stage1, 0.5), (stage2, 1.0)):
        losses = [loss for _, loss in result.losses]
        assert [step for step, _ in result.losses] == list(range(1, 19))
        assert mean(losses[-3:]) < mean(losses[:3]) - drop, losses

    # stage 1 saved only what trained: the connector, in safetensors, plus config and processor
    assert stage1.trainable_only and stage1.model_path == tmp_path / "stage1" / "trainable.safetensors"
    connector = load_file(stage1.model_path)
    assert sorted(connector) == [f"multi_modal_projector.layers.{i}.{p}" for i in (0, 1) for p in ("bias", "weight")]
    assert not (tmp_path / "stage1" / "model.safetensors").exists()
    assert (tmp_path / "stage1" / "config.json").is_file() and (
        tmp_path / "stage1" / "llavakit_processor.json"
    ).is_file()
    # its checkpoints: the last two, complete, trainable weights only, no staging folder left
    assert sorted(p.name for p in (tmp_path / "stage1").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-18"]
    checkpoint = tmp_path / "stage1" / "checkpoint-18"
    assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert not (checkpoint / "model.safetensors").exists() and not (tmp_path / "stage1" / ".staging").exists()
    assert torch.equal(
        load_file(checkpoint / "trainable.safetensors")["multi_modal_projector.layers.0.weight"],
        connector["multi_modal_projector.layers.0.weight"],
    )

    # stage 2 started from stage 1's connector and ends with a model folder that loads
    for name, tensor in connector.items():
        assert torch.equal(watch.before[name], tensor)
    assert not stage2.trainable_only and stage2.model_path == tmp_path / "stage2"
    loaded = LlavaKitForCausalLM.from_pretrained(stage2.model_path)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, watch.after[name]), name
    processor = LlavaKitProcessor.from_pretrained(stage2.model_path)
    assert processor.template_name == "vicuna_v1" and processor.num_image_tokens == loaded.config.num_image_tokens
    # and it reads the image: for each colour, the answer naming it is the likeliest of the four
    for name, rgb in COLOURS.items():
        assert answer_ranking(loaded.eval(), processor, Image.new("RGB", SIZE, rgb))[0] == name

    # the run folder records the resolved config, the bad-sample report and the loss curve
    assert load_config(tmp_path / "stage2" / CONFIG_NAME) == stage2.config
    assert stage2.config.optimization.connector_lr == stage2.config.optimization.lr == 1e-3
    assert json.loads((tmp_path / "stage2" / "skipped_samples.json").read_text()) == {"seen": 144, "skipped": []}
    assert (tmp_path / "stage2" / LOSS_PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stage2.wall_time > 0 and stage2.global_step == 18


def test_backbones_from_local_folders(tmp_path):
    """As the demo does: a saved CLIPModel, a saved Llama and a saved tokenizer, by path."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
    clip = CLIPModel(
        CLIPConfig(
            vision_config=dict(tower, image_size=32, patch_size=8),
            text_config=dict(tower, vocab_size=640),
            projection_dim=32,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    language = LlamaForCausalLM(tiny_text_config(vocab_size=590))  # fewer rows than the tokenizer's 600 ids: grown
    language.save_pretrained(tmp_path / "language")
    captions, _ = colour_world(tmp_path / "world", 8)
    watch = WeightSnapshots()
    result = run_training(
        tiny_recipe(
            "pretrain",
            captions,
            tmp_path / "run",
            f"model.vision={tmp_path / 'clip'}",
            f"model.language={tmp_path / 'language'}",
            f"model.tokenizer={tmp_path / 'tokenizer'}",
            "optimization.max_steps=2",
            "output.save_steps=0",
            "output.plot=false",
        ),
        callbacks=[watch],
    )
    # the pretrained weights were loaded (not drawn at random) and stayed frozen
    vision = clip.vision_model.state_dict()
    for name in ("embeddings.patch_embedding.weight", "encoder.layers.1.mlp.fc1.weight"):
        assert torch.equal(watch.before[f"vision_tower.encoder.{name}"], vision[name])
    q_proj = "language_model.model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(watch.before[q_proj], language.state_dict()["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(watch.after[q_proj], watch.before[q_proj])
    embeddings = watch.before["language_model.model.embed_tokens.weight"]
    assert embeddings.shape[0] == len(tokenizer) == 600
    assert torch.equal(embeddings[:590], language.state_dict()["model.embed_tokens.weight"])
    assert result.trainable_only and result.global_step == 2
