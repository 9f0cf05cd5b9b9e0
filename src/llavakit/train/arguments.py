"""transformers `TrainingArguments` from a resolved `TrainConfig`.

The one place where llavakit's config names meet the Trainer's, so the mapping can be read
(and tested) at a glance. Precision `auto` means bf16 on a GPU that supports it and fp32
otherwise; `report_to: auto` turns on TensorBoard and wandb when they are installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import TrainingArguments

from llavakit.errors import ConfigError, DeviceError
from llavakit.train.config import PRECISIONS, TrainConfig


def world_size_from_environment() -> int:
    """Processes of this run as the launcher (torchrun, deepspeed, accelerate) declared them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def precision_flags(precision: str) -> dict[str, bool]:
    if precision not in PRECISIONS:
        raise ConfigError(f"optimization.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return {"bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())}
    if precision == "fp16" and not torch.cuda.is_available():
        raise DeviceError("optimization.precision=fp16 needs a GPU; use bf16 or fp32 on this machine")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def installed_trackers() -> dict[str, bool]:
    """Which of TensorBoard and wandb transformers finds installed (what `report_to: auto` turns on)."""
    from transformers.integrations import is_tensorboard_available, is_wandb_available

    return {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}


def report_targets(report_to: str | list[str], installed: Mapping[str, bool] | None = None) -> list[str] | str:
    """`auto` -> the installed trackers (`installed`, by default `installed_trackers()`), or `none`;
    anything else passes through."""
    if report_to != "auto":
        return report_to
    installed = installed_trackers() if installed is None else installed
    found = [name for name, available in installed.items() if available]
    return found or "none"


def find_unused_parameters(config: TrainConfig, has_text_only: bool) -> bool:
    """Whether DDP must tolerate trainable parameters without gradients in a step.

    A trained vision tower always has some (LLaVA reads the penultimate layer, so the last
    layer and post-norm get none); a trained connector or tower has none in a text-only batch.
    Otherwise every trainable parameter takes part, and DDP can skip the extra graph walk.
    """
    chosen = config.distributed.find_unused_parameters
    if chosen is not None:
        return chosen
    stage = config.stage
    return bool(stage.train_vision or (stage.train_connector and has_text_only))


def training_arguments(
    config: TrainConfig, gradient_accumulation_steps: int, has_text_only: bool = True
) -> TrainingArguments:
    """The Trainer's arguments for `config` (resolved: no null rates, batch or epochs left).

    `has_text_only`: whether the data holds samples without images (see `find_unused_parameters`).
    """
    optim, output, distributed = config.optimization, config.output, config.distributed
    if distributed.deepspeed is not None and not Path(distributed.deepspeed).is_file():
        raise ConfigError(f"distributed.deepspeed: {distributed.deepspeed} does not exist")
    if distributed.fsdp_config is not None and not Path(distributed.fsdp_config).is_file():
        raise ConfigError(f"distributed.fsdp_config: {distributed.fsdp_config} does not exist")
    if distributed.deepspeed is not None and distributed.fsdp:
        raise ConfigError("choose one of distributed.deepspeed and distributed.fsdp")
    fsdp_config = None
    if distributed.fsdp:
        # Under FSDP, checkpointing belongs in its own config (the Trainer flag would all-gather twice).
        fsdp_config = json.loads(Path(distributed.fsdp_config).read_text()) if distributed.fsdp_config else {}
        fsdp_config.setdefault("activation_checkpointing", optim.gradient_checkpointing)
    return TrainingArguments(
        output_dir=output.dir,
        per_device_train_batch_size=optim.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_train_epochs=float(optim.epochs),
        max_steps=optim.max_steps,
        learning_rate=float(optim.lr),
        weight_decay=optim.weight_decay,
        warmup_steps=float(optim.warmup_ratio),  # below 1: a share of the total steps
        lr_scheduler_type=optim.scheduler,
        max_grad_norm=optim.max_grad_norm,
        optim=optim.optimizer,
        seed=optim.seed,
        activation_checkpointing=optim.gradient_checkpointing and not distributed.fsdp,
        **precision_flags(optim.precision),
        logging_strategy="steps",
        logging_steps=output.logging_steps,
        disable_tqdm=not output.progress_bar,
        report_to=report_targets(output.report_to),
        run_name=output.run_name,
        save_strategy="steps" if output.save_steps > 0 else "no",
        save_steps=max(output.save_steps, 1),
        save_total_limit=output.save_total_limit,
        remove_unused_columns=False,  # the collators need `skipped` / `sample_id`, which forward() lacks
        dataloader_num_workers=config.data.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Several CPU processes (torchrun without GPUs) must say so to form a gloo group; one
        # process keeps accelerate's own device choice (CUDA, MPS or CPU).
        use_cpu=not torch.cuda.is_available() and world_size_from_environment() > 1,
        ddp_find_unused_parameters=find_unused_parameters(config, has_text_only),
        ddp_backend=distributed.ddp_backend,
        deepspeed=distributed.deepspeed,
        fsdp=distributed.fsdp or None,
        fsdp_config=fsdp_config,
    )


__all__ = [
    "find_unused_parameters",
    "installed_trackers",
    "precision_flags",
    "report_targets",
    "training_arguments",
    "world_size_from_environment",
]
