"""The mapping from a resolved config to transformers' TrainingArguments."""

from __future__ import annotations

import pytest
import torch

from conftest import CONFIGS
from llavakit.train.arguments import (
    find_unused_parameters,
    installed_trackers,
    precision_flags,
    report_targets,
    training_arguments,
)
from llavakit.train.config import StageConfig, TrainConfig, load_config
from llavakit.train.recipes import resolve_config


def resolved(*overrides: str, recipe: str = "llava-1.5/finetune-7b.yaml") -> TrainConfig:
    return resolve_config(load_config(CONFIGS / recipe, ["distributed.deepspeed=null", *overrides]))


def test_recipe_numbers_reach_the_trainer(tmp_path):
    config = resolved(f"output.dir={tmp_path}", "output.save_steps=250", "data.num_workers=2")
    args = training_arguments(config, gradient_accumulation_steps=4)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 4)
    assert (args.learning_rate, args.num_train_epochs, args.weight_decay) == (2e-5, 1.0, 0.0)
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.03
    assert args.get_warmup_steps(1000) == 30  # 3 % of the steps
    assert args.activation_checkpointing is True and args.remove_unused_columns is False
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 250, 1)
    assert args.dataloader_num_workers == 2 and args.output_dir == str(tmp_path)
    assert training_arguments(resolved(f"output.dir={tmp_path}", "output.save_steps=0"), 1).save_strategy == "no"


def test_precision_and_reporting():
    assert precision_flags("fp32") == {"bf16": False, "fp16": False}
    assert precision_flags("bf16") == {"bf16": True, "fp16": False}
    assert precision_flags("auto") == {"bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())}
    with pytest.raises(ValueError, match="must be one of auto, bf16, fp16, fp32"):
        precision_flags("int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a GPU"):
            precision_flags("fp16")
    assert report_targets(["wandb"]) == ["wandb"] and report_targets("none") == "none"
    # `auto` turns on exactly the installed trackers, in a fixed order; none installed: "none"
    assert report_targets("auto", {"tensorboard": True, "wandb": True}) == ["tensorboard", "wandb"]
    assert report_targets("auto", {"tensorboard": False, "wandb": True}) == ["wandb"]
    assert report_targets("auto", {"tensorboard": True, "wandb": False}) == ["tensorboard"]
    assert report_targets("auto", {"tensorboard": False, "wandb": False}) == "none"
    assert report_targets(["wandb"], {"wandb": False}) == ["wandb"]  # a named tracker is the user's choice
    installed = installed_trackers()
    assert set(installed) == {"tensorboard", "wandb"} and report_targets("auto") == report_targets("auto", installed)


def test_ddp_tolerates_unused_parameters_only_when_some_can_be_unused():
    pretrain = resolve_config(TrainConfig(stage=StageConfig(name="pretrain")))
    assert find_unused_parameters(pretrain, has_text_only=False) is False  # every batch reaches the connector
    assert find_unused_parameters(pretrain, has_text_only=True) is True  # a text-only batch does not
    vision = resolve_config(TrainConfig(stage=StageConfig(name="finetune", train_vision=True)))
    assert find_unused_parameters(vision, has_text_only=False) is True  # the tower's last layer never gets a gradient
    llm_only = resolve_config(TrainConfig(stage=StageConfig(name="finetune", train_connector=False)))
    assert find_unused_parameters(llm_only, has_text_only=True) is False
    llm_only.distributed.find_unused_parameters = True
    assert find_unused_parameters(llm_only, has_text_only=False) is True


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["distributed.deepspeed=nowhere/zero9.json"], "distributed.deepspeed: nowhere/zero9.json does not exist"),
        (
            [f"distributed.deepspeed={CONFIGS / 'deepspeed/zero3.json'}", "distributed.fsdp=true"],
            "choose one of distributed.deepspeed and distributed.fsdp",
        ),
        (["distributed.fsdp=true", "distributed.fsdp_config=missing.json"], "fsdp_config: missing.json does not exist"),
    ],
)
def test_contradictions_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        training_arguments(resolved(f"output.dir={tmp_path}", *overrides), 1)
