"""Training config: YAML round trip, dotted overrides, unknown keys, model specs included by path,
and the shipped recipes' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS
from llavakit.errors import ConfigError
from llavakit.model.build import ModelSpec, load_model_spec
from llavakit.train.config import (
    DatasetConfig,
    OptimizationConfig,
    TrainConfig,
    config_to_yaml,
    load_config,
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
    assert load_config(path, ["model.vision_feature_layer=[1, 2]"]).model.vision_feature_layer == [1, 2]


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
        load_config(None, ["x=1"])
    assert load_config(None, ["output.dir=runs/a"]).output.dir == "runs/a"


# ---- values that cannot work -----------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("optimization.epochs=.inf", "optimization.epochs"),
        ("optimization.epochs=.nan", "optimization.epochs"),
        ("optimization.epochs=-1", "optimization.epochs"),
        ("optimization.max_steps=-5", "optimization.max_steps"),
        ("data.max_length=0", "data.max_length"),
        ("optimization.per_device_batch_size=0", "optimization.per_device_batch_size"),
        ("optimization.global_batch_size=-8", "optimization.global_batch_size"),
        ("optimization.lr=-1e-3", "optimization.lr"),
        ("optimization.vision_lr=.inf", "optimization.vision_lr"),
        ("optimization.connector_lr=-2e-5", "optimization.connector_lr"),
        ("optimization.weight_decay=-0.1", "optimization.weight_decay"),
        ("optimization.warmup_ratio=1", "optimization.warmup_ratio"),
        ("optimization.warmup_ratio=-0.1", "optimization.warmup_ratio"),
        ("optimization.max_grad_norm=-1", "optimization.max_grad_norm"),
        ("optimization.seed=-1", "optimization.seed"),
        ("optimization.precision=int8", "optimization.precision"),
        ("optimization.scheduler=cosine_annealing", "optimization.scheduler"),
        ("optimization.optimizer=adamw_fast", "optimization.optimizer"),
        ("data.template=vicuna", "data.template"),
        ("data.datasets.0.fraction=0", "data.datasets.0.fraction"),
        ("data.datasets.0.fraction=1.5", "data.datasets.0.fraction"),
        ("data.datasets.0.path=''", "data.datasets.0.path"),
        ("data.max_skipped_fraction=1.5", "data.max_skipped_fraction"),
        ("data.max_skipped_fraction=-0.1", "data.max_skipped_fraction"),
        ("data.num_workers=-1", "data.num_workers"),
        ("stage.lora.r=0", "stage.lora.r"),
        ("stage.lora.dropout=1", "stage.lora.dropout"),
        ("output.save_steps=-1", "output.save_steps"),
        ("output.save_total_limit=0", "output.save_total_limit"),
        ("output.logging_steps=0", "output.logging_steps"),
    ],
)
def test_values_that_cannot_work_are_config_errors_naming_the_key(tmp_path, override, key):
    path = tmp_path / "recipe.yaml"
    path.write_text("data:\n  datasets:\n    - {path: a.json}\n")
    with pytest.raises(ConfigError, match=rf"config key '{key}' must be .*, got "):
        load_config(path, [override])


def test_combinations_that_cannot_work_are_refused_and_every_bad_key_is_named():
    with pytest.raises(ConfigError, match=r"optimization.epochs=0 with optimization.max_steps<=0 trains nothing"):
        load_config(None, ["optimization.epochs=0"])
    assert load_config(None, ["optimization.epochs=0", "optimization.max_steps=5"]).optimization.max_steps == 5
    with pytest.raises(ConfigError, match=r"output.overwrite=true and output.resume exclude each other"):
        load_config(None, ["output.overwrite=true", "output.resume=true"])
    with pytest.raises(ConfigError) as raised:
        load_config(None, ["data.max_length=0", "optimization.lr=-1", "output.save_steps=-3"])
    assert all(key in str(raised.value) for key in ("data.max_length", "optimization.lr", "output.save_steps"))


def test_edge_values_that_work_are_accepted():
    config = load_config(
        None,
        [
            "data.max_skipped_fraction=0",  # no bad sample tolerated
            "data.datasets=[{path: a.json, fraction: 1.0}]",
            "optimization.warmup_ratio=0",
            "optimization.lr=0",
            "optimization.max_grad_norm=0",
            "optimization.epochs=0.5",
            "output.save_steps=0",
            "output.save_total_limit=null",
        ],
    )
    assert resolve_config(config).optimization.epochs == 0.5


def test_configs_built_in_python_are_checked_when_resolved():
    with pytest.raises(ConfigError, match=r"'optimization.epochs' must be a finite number >= 0.*, got -1"):
        resolve_config(TrainConfig(optimization=OptimizationConfig(epochs=-1)))
    with pytest.raises(ConfigError, match=r"config key 'stage.name': unknown stage 'align'"):
        resolve_config(load_config(None, ["stage.name=align"]))


# ---- model specs included by path ----------------------------------------------------------------

HD_SPEC = CONFIGS / "models/llava-1.5-hd-13b.yaml"


def _recipe(folder: Path, model_section: str) -> Path:
    """A recipe in `folder/recipes/` whose model section is `model_section` (YAML, indented by the caller)."""
    path = folder / "recipes" / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"model:\n{model_section}data:\n  datasets:\n    - {{path: a.json}}\n")
    return path


def test_a_recipe_includes_a_model_spec_and_overrides_its_keys(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "hd.yaml").write_text(HD_SPEC.read_text())
    recipe = _recipe(
        tmp_path,
        "  spec: ../models/hd.yaml\n  vision: openai/clip-vit-large-patch14\n  hd_max_cells: 4\n"
        "  tokenizer: tiny\n  connector_weights: runs/pretrain\n",
    )
    config = load_config(recipe)
    spec = load_model_spec(HD_SPEC)
    assert config.model.vision == "openai/clip-vit-large-patch14"  # the recipe's value replaces the spec's mapping
    assert (config.model.hd_max_cells, config.model.tokenizer, config.model.connector_weights) == (
        4,
        "tiny",
        "runs/pretrain",
    )
    assert (config.model.name, config.model.language, config.model.image_mode) == (
        spec.name,
        spec.language,
        "hd",
    )
    save_config(config, tmp_path / "run" / "train_config.yaml")
    assert "spec:" not in (tmp_path / "run" / "train_config.yaml").read_text()  # written out in full
    assert load_config(tmp_path / "run" / "train_config.yaml") == config


def test_an_included_spec_is_found_beside_the_recipe_then_in_the_working_directory(tmp_path, monkeypatch):
    relative = "configs/models/llava-1.5-hd-13b.yaml"
    recipe = _recipe(tmp_path, f"  spec: {relative}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"included model spec '{relative}' does not exist"):
        load_config(recipe)
    monkeypatch.chdir(CONFIGS.parent)
    assert load_config(recipe).model == load_model_spec(HD_SPEC)
    beside = recipe.parent / relative
    beside.parent.mkdir(parents=True)
    beside.write_text(HD_SPEC.read_text().replace("name: llava-1.5-hd-13b", "name: beside"))
    assert load_config(recipe).model.name == "beside"


def test_a_spec_file_and_a_recipe_model_section_are_one_schema(tmp_path):
    spec = load_model_spec(HD_SPEC)
    indented = "".join(f"  {line}\n" for line in HD_SPEC.read_text().splitlines() if not line.startswith("#"))
    written_out = load_config(_recipe(tmp_path / "a", indented)).model
    included = load_config(_recipe(tmp_path / "b", f"  spec: {HD_SPEC}\n")).model
    assert isinstance(spec, ModelSpec) and spec.image_mode == "hd" and spec.image_token_id == 32000
    assert written_out == included == spec
    derived = tmp_path / "derived.yaml"
    derived.write_text(f"spec: {HD_SPEC}\nname: hd-4\nhd_max_cells: 4\n")  # a spec file may include one too
    assert load_model_spec(derived) == ModelSpec(**{**vars(spec), "name": "hd-4", "hd_max_cells": 4})


def test_an_unknown_key_in_an_included_spec_names_the_spec_file_and_key(tmp_path):
    (tmp_path / "bad.yaml").write_text("vision: {model_type: clip_vision_model}\nimage_mod: hd\n")
    recipe = _recipe(tmp_path, f"  spec: {tmp_path / 'bad.yaml'}\n")
    with pytest.raises(
        ValueError, match=r"bad.yaml: unknown config key 'model.image_mod'; 'model' has: .*\bimage_mode\b"
    ):
        load_config(recipe)
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key 'image_mod'"):
        load_model_spec(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("vision_feature_layer: penultimate\n")
    with pytest.raises(ValueError, match=r"bad.yaml: config key 'model.vision_feature_layer' must be an integer"):
        load_config(recipe)


def test_overrides_reach_the_keys_of_an_included_spec(tmp_path):
    recipe = _recipe(tmp_path, f"  spec: {HD_SPEC}\n")
    switch = ["model.image_mode=anyres", "model.language.hidden_size=64", "model.video_token=null"]
    with pytest.raises(ValueError, match=r"model.hd_max_cells=6 .* does not apply to model.image_mode='anyres'"):
        load_config(recipe, switch)  # the HD spec's own HD-only key must go with its mode
    config = load_config(recipe, [*switch, "model.hd_max_cells=null"])
    spec = load_model_spec(HD_SPEC)
    assert config.model.image_mode == "anyres"
    assert config.model.language == {**spec.language, "hidden_size": 64}
    with pytest.raises(ValueError, match=r"unknown config key 'model.image_mod'"):
        load_config(recipe, ["model.image_mod=anyres"])


# ---- the shipped recipes -------------------------------------------------------------------------

RECIPE_FOLDERS = ("llava", "llava-1.5", "llava-1.5-hd", "llava-next", "llava-onevision", "mm1", "tiny")
RECIPES = sorted(p for folder in RECIPE_FOLDERS for p in (CONFIGS / folder).glob("*.yaml"))


def test_every_recipe_loads_and_resolves():
    assert len(RECIPES) >= 29
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
    assert (config.data.template, config.data.image_aspect) == (template, image_mode)
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
