"""Training config: YAML round trip, dotted overrides, unknown keys, and the shipped recipes' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS
from llavakit.train.config import (
    DatasetConfig,
    TrainConfig,
    apply_overrides,
    config_to_yaml,
    from_dict,
    load_config,
    parse_override,
    save_config,
    to_dict,
)
from llavakit.train.recipes import resolve_config


def test_yaml_round_trip_gives_an_equal_config(tmp_path):
    config = load_config(
        None,
        [
            "data.datasets=[{path: a.json, fraction: 0.5}, {path: b.jsonl, response_format_prompt: Answer briefly.}]",
            "model.vision_feature_layer=[-2, -5]",
            "stage.lora.enabled=true",
            "output.report_to=[tensorboard]",
        ],
    )
    save_config(config, tmp_path / "run.yaml")
    again = load_config(tmp_path / "run.yaml")
    assert again == config
    assert again.data.datasets[1] == DatasetConfig(path="b.jsonl", response_format_prompt="Answer briefly.")
    assert again.model.vision_feature_layer == [-2, -5]
    assert yaml.safe_load(config_to_yaml(config)) == to_dict(config)


def test_overrides_parse_values_as_yaml_and_reach_nested_and_listed_fields(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("data:\n  datasets:\n    - {path: a.json}\n    - {path: b.json}\noptimization:\n  lr: 1.0e-3\n")
    config = load_config(
        path,
        [
            "optimization.lr=2e-5",  # YAML 1.1 reads this as text; the field type makes it a float
            "data.datasets.1.fraction=0.25",
            "data.packing=true",
            "stage.lora.target_modules=[q_proj, v_proj]",
            "model.language={model_type: llama, hidden_size: 64}",
            "output.resume=runs/x/checkpoint-10",
        ],
    )
    assert config.optimization.lr == 2e-5 and isinstance(config.optimization.lr, float)
    assert [d.fraction for d in config.data.datasets] == [1.0, 0.25]
    assert config.data.packing is True
    assert config.stage.lora.target_modules == ["q_proj", "v_proj"]
    assert config.model.language == {"model_type": "llama", "hidden_size": 64}
    assert config.output.resume == "runs/x/checkpoint-10"
    assert load_config(path, ["output.resume=true"]).output.resume is True
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimization.lrr=1e-3", r"unknown config key 'optimization.lrr'.*'optimization' has: .*\blr\b"),
        ("stage.lora.rank=8", r"unknown config key 'stage.lora.rank'"),
        ("trainer.lr=1", r"unknown config key 'trainer'"),
        ("data.datasets.3.path=x.json", r"'data.datasets.3' is not an index of a list of 1 item"),
        ("optimization.epochs=many", r"'optimization.epochs' must be a number"),
        ("data.packing=maybe", r"'data.packing' must be true or false"),
        ("optimization.lr", r"must look like key=value"),
    ],
)
def test_bad_overrides_raise_naming_the_key(tmp_path, override, message):
    path = tmp_path / "recipe.yaml"
    path.write_text("data:\n  datasets:\n    - {path: a.json}\n")
    with pytest.raises(ValueError, match=message):
        load_config(path, [override])


def test_unknown_keys_in_a_file_raise_naming_file_and_key(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("optimization:\n  lr: 1.0e-3\n  warmup: 0.1\n")
    with pytest.raises(ValueError, match=r"recipe.yaml: unknown config key 'optimization.warmup'"):
        load_config(path)
    path.write_text("data:\n  datasets:\n    - {path: a.json, folder: x}\n")
    with pytest.raises(ValueError, match=r"unknown config key 'data.datasets.0.folder'"):
        load_config(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown config key 'x'"):
        from_dict(TrainConfig, {"x": 1})
    assert apply_overrides({}, ["output.dir=runs/a"]) == {"output": {"dir": "runs/a"}}


# ---- the shipped recipes -------------------------------------------------------------------------

RECIPES = sorted(p for folder in ("llava", "llava-1.5", "tiny") for p in (CONFIGS / folder).glob("*.yaml"))


def test_every_recipe_loads_and_resolves():
    assert len(RECIPES) >= 9
    for path in RECIPES:
        config = resolve_config(load_config(path))
        assert config.data.datasets, path
        assert config.optimization.global_batch_size % config.optimization.per_device_batch_size == 0, path
        if config.distributed.deepspeed:
            assert (CONFIGS.parent / config.distributed.deepspeed).is_file(), path


# (connector, vision, language, template, image mode, lr, global batch, epochs, data file) per the papers
PAPER = {
    "llava/pretrain-7b.yaml": (
        "linear",
        "openai/clip-vit-large-patch14",
        "lmsys/vicuna-7b-v1.3",
        "plain",
        "square",
        2e-3,
        128,
        1,
        "chat.json",
    ),
    "llava/finetune-7b.yaml": (
        "linear",
        "openai/clip-vit-large-patch14",
        "lmsys/vicuna-7b-v1.3",
        "vicuna_v1",
        "square",
        2e-5,
        32,
        3,
        "llava_instruct_158k.json",
    ),
    "llava-1.5/pretrain-7b.yaml": (
        "mlp2x_gelu",
        "openai/clip-vit-large-patch14-336",
        "lmsys/vicuna-7b-v1.5",
        "plain",
        "square",
        1e-3,
        256,
        1,
        "blip_laion_cc_sbu_558k.json",
    ),
    "llava-1.5/pretrain-13b.yaml": (
        "mlp2x_gelu",
        "openai/clip-vit-large-patch14-336",
        "lmsys/vicuna-13b-v1.5",
        "plain",
        "square",
        1e-3,
        256,
        1,
        "blip_laion_cc_sbu_558k.json",
    ),
    "llava-1.5/finetune-7b.yaml": (
        "mlp2x_gelu",
        "openai/clip-vit-large-patch14-336",
        "lmsys/vicuna-7b-v1.5",
        "vicuna_v1",
        "pad",
        2e-5,
        128,
        1,
        "llava_v1_5_mix665k.json",
    ),
    "llava-1.5/finetune-13b.yaml": (
        "mlp2x_gelu",
        "openai/clip-vit-large-patch14-336",
        "lmsys/vicuna-13b-v1.5",
        "vicuna_v1",
        "pad",
        2e-5,
        128,
        1,
        "llava_v1_5_mix665k.json",
    ),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_hold_the_papers_settings(name):
    connector, vision, language, template, image_mode, lr, batch, epochs, data_file = PAPER[name]
    config = resolve_config(load_config(CONFIGS / name))
    assert (config.model.connector, config.model.vision, config.model.language) == (connector, vision, language)
    assert (config.data.template, config.data.image_mode) == (template, image_mode)
    assert (config.optimization.lr, config.optimization.global_batch_size, config.optimization.epochs) == (
        lr,
        batch,
        epochs,
    )
    assert Path(config.data.datasets[0].path).name == data_file
    assert config.model.vision_feature_layer == -2 and config.data.max_length == 2048
    assert (config.optimization.warmup_ratio, config.optimization.scheduler, config.optimization.weight_decay) == (
        0.03,
        "cosine",
        0.0,
    )
    stage2 = name.split("/")[1].startswith("finetune")
    assert config.stage.name == ("finetune" if stage2 else "pretrain")
    assert config.stage.train_llm is stage2 and config.stage.train_connector and not config.stage.train_vision
    assert (config.model.connector_weights is not None) is stage2
    assert config.data.group_by_modality is name.startswith("llava-1.5/finetune")


def test_lora_recipe_follows_llava_1_5_lora():
    config = resolve_config(load_config(CONFIGS / "llava-1.5/finetune-lora-7b.yaml"))
    lora = config.stage.lora
    assert lora.enabled and (lora.r, lora.alpha) == (128, 256)
    assert (config.optimization.lr, config.optimization.connector_lr) == (2e-4, 2e-5)


def test_deepspeed_and_fsdp_files():
    zero2 = json.loads((CONFIGS / "deepspeed/zero2.json").read_text())
    zero3 = json.loads((CONFIGS / "deepspeed/zero3.json").read_text())
    assert zero2["zero_optimization"]["stage"] == 2 and zero3["zero_optimization"]["stage"] == 3
    # batch sizes come from the Trainer ("auto"), so one file serves every world size
    for config in (zero2, zero3):
        assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    fsdp = json.loads((CONFIGS / "fsdp/full_shard.json").read_text())
    assert fsdp["state_dict_type"] == "FULL_STATE_DICT"
