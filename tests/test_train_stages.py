"""Stage recipes: resolved defaults, batch arithmetic, freezing, and which weights really move in training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import COLOURS, Sample, WeightSnapshots, tiny_recipe, write_llava_data
from llavakit.train.config import LoraConfig, StageConfig, TrainConfig
from llavakit.train.model_setup import build_model_and_processor
from llavakit.train.recipes import (
    count_parameters,
    freeze_for_stage,
    gradient_accumulation_steps,
    parameter_groups,
    part_of,
    resolve_config,
)
from llavakit.train.run import run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def colour_data(folder: Path, n: int = 16) -> Path:
    """Solid-colour images, each answered by its colour word."""
    names = [list(COLOURS)[i % len(COLOURS)] for i in range(n)]
    samples = [
        Sample(f"s{i}", "<image>\nWhat color is it?", f"It is {name}.", f"{i}.png", COLOURS[name], (40, 32))
        for i, name in enumerate(names)
    ]
    return write_llava_data(folder, samples)


def tiny(stage: str, tmp_path: Path, *overrides: str) -> TrainConfig:
    return tiny_recipe(
        stage,
        colour_data(tmp_path / "data"),
        tmp_path / "run",
        "model.connector_weights=null",
        "data.template=vicuna_v1",
        "output.save_steps=0",
        "output.plot=false",
        *overrides,
    )


# ---- recipes and arithmetic ----------------------------------------------------------------------


def test_recipes_fill_what_the_config_leaves_open():
    pretrain = resolve_config(TrainConfig(stage=StageConfig(name="pretrain")))
    assert (pretrain.stage.train_vision, pretrain.stage.train_connector, pretrain.stage.train_llm) == (
        False,
        True,
        False,
    )
    assert (pretrain.optimization.lr, pretrain.optimization.global_batch_size, pretrain.optimization.epochs) == (
        1e-3,
        256,
        1,
    )
    linear = TrainConfig(stage=StageConfig(name="pretrain"))
    linear.model.connector = "linear"
    assert resolve_config(linear).optimization.lr == 2e-3  # LLaVA aligned its linear projection at 2e-3
    finetune = resolve_config(TrainConfig(stage=StageConfig(name="finetune", train_vision=True)))
    optim = finetune.optimization
    assert (optim.lr, optim.connector_lr, optim.vision_lr, optim.global_batch_size) == (2e-5, 2e-5, 2e-6, 128)
    lora = resolve_config(TrainConfig(stage=StageConfig(name="finetune", lora=LoraConfig(enabled=True))))
    assert (lora.optimization.lr, lora.optimization.connector_lr) == (2e-4, 2e-5)
    explicit = TrainConfig(stage=StageConfig(name="finetune"))
    explicit.optimization.lr = 1e-5
    assert resolve_config(explicit).optimization.connector_lr == 1e-5


@pytest.mark.parametrize(
    "stage, message",
    [
        (StageConfig(name="align"), "unknown stage 'align'"),
        (StageConfig(name="pretrain", lora=LoraConfig(enabled=True)), "needs stage.train_llm=true"),
        (StageConfig(name="finetune", lora=LoraConfig(quantize="4bit")), "needs stage.lora.enabled=true"),
        (StageConfig(name="finetune", lora=LoraConfig(enabled=True, quantize="3bit")), "null, 4bit or 8bit"),
        (StageConfig(name="pretrain", train_connector=False), "trains nothing"),
    ],
)
def test_inconsistent_stages_are_refused(stage, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(TrainConfig(stage=stage))


def test_gradient_accumulation_makes_the_global_batch():
    assert gradient_accumulation_steps(256, 16, 8) == 2  # LLaVA-1.5 stage 1 on 8 GPUs
    assert gradient_accumulation_steps(128, 16, 8) == 1
    assert gradient_accumulation_steps(128, 4, 1) == 32
    with pytest.raises(ValueError, match=r"not a multiple of .* 16 x 3 = 48"):
        gradient_accumulation_steps(128, 16, 3)
    with pytest.raises(ValueError, match="must be positive"):
        gradient_accumulation_steps(128, 0, 1)


# ---- freezing ------------------------------------------------------------------------------------


def test_freeze_for_stage_counts_each_part(tmp_path, caplog):
    model, _ = build_model_and_processor(tiny("pretrain", tmp_path))
    sizes = {
        "vision": sum(p.numel() for p in model.vision_tower.parameters()),
        "connector": sum(p.numel() for p in model.multi_modal_projector.parameters()),
        "llm": sum(p.numel() for p in model.language_model.parameters()),
    }
    assert sizes["connector"] == (32 * 64 + 64) + (64 * 64 + 64)  # mlp2x_gelu: vision 32 -> text 64 -> 64
    with caplog.at_level("INFO", logger="llavakit.train.recipes"):
        report = freeze_for_stage(model, resolve_config(tiny("pretrain", tmp_path)).stage)
    assert {part: (c.total, c.trainable) for part, c in report.parts.items()} == {
        "vision": (sizes["vision"], 0),
        "connector": (sizes["connector"], sizes["connector"]),
        "llm": (sizes["llm"], 0),
    }
    assert "stage pretrain: 6,272 of" in caplog.text and "(frozen)" in caplog.text
    stage = resolve_config(tiny("finetune", tmp_path, "stage.train_vision=true")).stage
    report = freeze_for_stage(model, stage)
    assert report.trainable == report.total == sum(sizes.values())
    assert count_parameters(model).trainable == report.total


def test_parameter_groups_split_by_part_and_decay():
    model = torch.nn.ModuleDict(
        {
            "vision_tower": torch.nn.Linear(2, 2),
            "multi_modal_projector": torch.nn.Linear(2, 3),
            "language_model": torch.nn.ModuleDict({"layer": torch.nn.Linear(3, 3), "norm": torch.nn.LayerNorm(3)}),
        }
    )
    model["vision_tower"].requires_grad_(False)
    decay = ["multi_modal_projector.weight", "language_model.layer.weight"]
    groups = parameter_groups(model, {"vision": 1.0, "connector": 0.1, "llm": 0.01}, 0.05, decay)
    summary = [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
    assert summary == [
        ("connector", 0.1, 0.05, 1),
        ("connector_no_decay", 0.1, 0.0, 1),
        ("llm", 0.01, 0.05, 1),
        ("llm_no_decay", 0.01, 0.0, 3),  # bias, norm weight, norm bias
    ]
    assert part_of("base_model.model.multi_modal_projector.modules_to_save.default.layers.0.weight") == "connector"
    with pytest.raises(ValueError, match="belongs to no known part"):
        part_of("lm_head.weight")


class Snapshots(WeightSnapshots):
    """Weights at the start and end of training, and the optimizer's groups."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        self.groups = {g["name"]: (g["initial_lr"], g["weight_decay"]) for g in optimizer.param_groups}

    def changed_parts(self) -> dict[str, set[str]]:
        changed: dict[str, set[str]] = {}
        for name, tensor in self.after.items():
            if not torch.equal(tensor, self.before[name]):
                changed.setdefault(part_of(name), set()).add(name)
        return changed


@pytest.mark.parametrize(
    "stage, overrides, moving",
    [
        ("pretrain", [], {"connector"}),
        # activation checkpointing in a frozen language model still carries the gradient to the connector
        ("pretrain", ["optimization.gradient_checkpointing=true"], {"connector"}),
        ("finetune", [], {"connector", "llm"}),
        ("finetune", ["stage.train_vision=true", "optimization.vision_lr=2e-3"], {"vision", "connector", "llm"}),
    ],
)
def test_exactly_the_stage_parts_change_in_training(tmp_path, stage, overrides, moving):
    watch = Snapshots()
    config = tiny(stage, tmp_path, "optimization.max_steps=2", "optimization.weight_decay=0.1", *overrides)
    run_training(config, callbacks=[watch])
    changed = watch.changed_parts()
    assert set(changed) == moving
    if "llm" in moving:  # every language-model tensor gets a gradient
        llm = {k for k in watch.before if part_of(k) == "llm"}
        assert changed["llm"] == llm
    if "vision" in moving:
        # LLaVA reads the penultimate layer: the last encoder layer and the post-norm get no gradient
        vision = {k for k in watch.before if part_of(k) == "vision"}
        unused = {k for k in vision if ".layers.2." in k or "post_layernorm" in k}
        assert changed["vision"] == vision - unused and unused
        assert watch.groups["vision"] == (2e-3, 0.1) and watch.groups["vision_no_decay"][1] == 0.0
    assert watch.groups["connector"] == (config.optimization.lr, 0.1)
    assert all(name.split("_")[0] in moving for name in watch.groups)
