"""transformers `TrainingArguments` from a resolved `TrainConfig`.

The one place where llavakit's config names meet the Trainer's, so the mapping can be read
(and tested) at a glance. Precision `auto` means bf16 on a GPU that supports it and fp32
otherwise; `report_to: auto` turns on TensorBoard and wandb when they are installed.

`check_distributed` refuses, before any model is built, the scale-out settings this machine or
llavakit's saving cannot honour: FSDP without GPUs (accelerate shards over accelerators only;
DeepSpeed ZeRO-2/3 runs on CPUs too), a DeepSpeed config without deepspeed installed or
without a launcher (torchrun, even for one process), and ZeRO-3 settings under which no
loadable model would be written at the end of the run.
"""

from __future__ import annotations

import importlib.util
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


def rank_from_environment() -> int:
    """This process's rank as the launcher declared it (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


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


def has_sharding_accelerator() -> bool:
    """Whether this machine has an accelerator that FSDP can shard over (CUDA, XPU, NPU, ...).

    accelerate turns FSDP on only for multi-accelerator runs; CPUs (and a single Apple MPS
    device) fall back to plain DDP, which would silently keep a full model copy per process.
    """
    device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return device is not None and device.type not in ("cpu", "mps")


def read_deepspeed_config(path: str | Path) -> dict:
    """The DeepSpeed JSON at `path` as a dict (a `ConfigError` names a missing or unreadable file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"distributed.deepspeed: {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"distributed.deepspeed: {path} is not a readable JSON file ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"distributed.deepspeed: {path} must hold a JSON object, not {type(config).__name__}")
    return config


def zero_stage(deepspeed_config: Mapping) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it has no `zero_optimization`)."""
    zero = deepspeed_config.get("zero_optimization")
    stage = zero.get("stage", 0) if isinstance(zero, Mapping) else 0
    return stage if isinstance(stage, int) else 0


def _check_fsdp_device() -> None:
    """FSDP on a machine without accelerators would quietly run as DDP: refuse it, naming DeepSpeed."""
    if not has_sharding_accelerator():
        raise ConfigError(
            "distributed.fsdp=true needs GPUs: accelerate shards a model with FSDP over accelerators only, "
            "and this machine has none. On CPUs use DeepSpeed instead (distributed.fsdp=false "
            "distributed.deepspeed=configs/deepspeed/zero3.json, or zero2.json), launched with torchrun"
        )


def _check_deepspeed(config: TrainConfig) -> None:
    """DeepSpeed is installed, and under ZeRO-3 the end of the run can write what the stage promises."""
    settings = read_deepspeed_config(config.distributed.deepspeed)
    if zero_stage(settings) == 3:
        _check_zero3_saving(config, settings)
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"distributed.deepspeed={config.distributed.deepspeed} needs the deepspeed package: "
            "pip install 'llavakit[deepspeed]' (on a CPU-only machine, with the CPU torch already installed: "
            "pip install --no-build-isolation -c constraints-cpu.txt deepspeed)"
        )
    if not started_by_a_launcher() and importlib.util.find_spec("mpi4py") is None:
        raise ConfigError(
            f"distributed.deepspeed={config.distributed.deepspeed} runs under a launcher that names each "
            "process's rank: torchrun --nproc_per_node N -m llavakit.cli train ... (N=1 for one process), "
            "or the deepspeed launcher"
        )


def started_by_a_launcher() -> bool:
    """Whether torchrun (or the deepspeed / accelerate launcher) started this process.

    Without the rank variables DeepSpeed falls back to MPI discovery, which fails without
    mpi4py long after the model has been built.
    """
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def _check_zero3_saving(config: TrainConfig, settings: Mapping) -> None:
    """Under ZeRO-3 each process holds a slice of every weight: the end of the run must be able to
    gather what the stage writes (a full model needs the config's gather flag; a merge cannot run)."""
    full_model = config.stage.train_llm and not config.stage.lora.enabled
    gathers = settings["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save") is True
    if full_model and not gathers:
        raise ConfigError(
            f"distributed.deepspeed: {config.distributed.deepspeed} runs ZeRO-3 without "
            '"stage3_gather_16bit_weights_on_model_save": true, so the run could not write a loadable model '
            "(each process holds only a slice of the weights); set it true in the zero_optimization section"
        )
    if config.stage.lora.enabled and config.output.merge_lora:
        raise ConfigError(
            "output.merge_lora=true cannot merge under ZeRO-3 (each process holds only a slice of the weights): "
            "use configs/deepspeed/zero2.json, or merge the saved adapter afterwards in one process "
            "(peft: PeftModel.from_pretrained(...).merge_and_unload())"
        )


def check_distributed(config: TrainConfig) -> None:
    """Refuse scale-out settings that cannot run here (module docstring); cheap, so it runs before the
    model is built, and again when the Trainer's arguments are made."""
    distributed = config.distributed
    if distributed.deepspeed is not None and not Path(distributed.deepspeed).is_file():
        raise ConfigError(f"distributed.deepspeed: {distributed.deepspeed} does not exist")
    if distributed.fsdp_config is not None and not Path(distributed.fsdp_config).is_file():
        raise ConfigError(f"distributed.fsdp_config: {distributed.fsdp_config} does not exist")
    if distributed.deepspeed is not None and distributed.fsdp:
        raise ConfigError("choose one of distributed.deepspeed and distributed.fsdp")
    if distributed.fsdp:
        _check_fsdp_device()
    if distributed.deepspeed is not None:
        _check_deepspeed(config)


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
    check_distributed(config)
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
    "check_distributed",
    "find_unused_parameters",
    "has_sharding_accelerator",
    "installed_trackers",
    "precision_flags",
    "read_deepspeed_config",
    "report_targets",
    "started_by_a_launcher",
    "training_arguments",
    "world_size_from_environment",
    "zero_stage",
]
