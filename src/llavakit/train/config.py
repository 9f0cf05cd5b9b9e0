"""Training configuration: nested dataclasses, read from YAML, overridden with dotted `key=value`.

One section per concern, so a recipe reads top to bottom and code passes whole sections
around instead of dozens of keyword arguments:

    model:         what to build (`llavakit.model.build.ModelSpec`: backbones, connector, tokenizer,
                   high-resolution layout) or load (checkpoint, stage-1 weights); may include a
                   model spec file (`model: {spec: configs/models/x.yaml, ...}`)
    data:          the dataset mixture, conversation template, image recipe, length, packing, grouping
    stage:         what trains (`pretrain` / `finetune` recipes, vision tower, LoRA / QLoRA)
    optimization:  batch sizes, epochs, learning rates per part, schedule, precision, seed
    distributed:   DeepSpeed / FSDP / DDP settings handed to transformers' Trainer
    output:        run folder, checkpoints, logging, resume

    config = load_config("configs/llava-1.5/finetune-7b.yaml", ["optimization.lr=1e-5", "data.packing=true"])

The files are read by OmegaConf structured configs (`llavakit.config_files`): override values
are parsed as YAML (`true`, `[1, 2]`, `{a: 1}`); list items are addressed by index
(`data.datasets.0.fraction=0.5`). A key that no dataclass declares raises `ConfigError` (a
ValueError) naming it, in files and overrides alike, so a typo never silently trains with a
default; so does a value that cannot work (`check_values`: epochs infinite or negative, a batch
or length below 1, a negative rate, a share outside its range, an unknown template, scheduler or
optimizer), naming every such key at once.
Fields left `null` in `optimization` are filled from the stage recipe by
`llavakit.train.recipes.resolve_config`; the resolved config is what each run folder records
(an included model spec written out in full).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llavakit.config_files import Layer, load_structured, read_yaml, union_field
from llavakit.errors import ConfigError
from llavakit.model.build import ModelSpec, model_spec_layers
from llavakit.train.config_checks import PRECISIONS, check_values

# The resolved config a run folder, and each of its checkpoints, records.
CONFIG_NAME = "train_config.yaml"


def _is_report_to(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value))


def _is_resume(value: Any) -> bool:
    return isinstance(value, (bool, str))


@dataclass
class DatasetConfig:
    """One dataset of the mixture (fields of `llavakit.data.records.DatasetSpec`; docs/data.md).

    `fraction`: the share of the records kept (seeded, without replacement).
    `weight`: the dataset's share of the mixture's draws, normalised over the datasets (MM1:
    captions 4, interleaved 4, text 1); a dataset smaller than its share is repeated, a larger one
    downsampled. All datasets have a weight or none does (none: each kept record once per
    epoch). With `fraction`, the weight draws from the records `fraction` kept.
    `format`: `conversation` (LLaVA records), `interleaved` (OBELICS / MMC4 documents, loss on
    all text) or `text` (`{"text": ...}`, loss on all tokens); null: detected per record.
    """

    path: str = ""
    image_folder: str | None = None
    fraction: float = 1.0
    response_format_prompt: str | None = None
    name: str | None = None
    allow_outside_paths: bool = False  # absolute image paths and paths with `..` (off: a bad sample, unsafe path)
    video_folder: str | None = None  # where relative video paths start (default: image_folder); needs model.video_token
    weight: float | None = None  # share of a weighted mixture's draws (null: unweighted)
    format: str | None = None  # conversation | interleaved | text (null: detected per record)
    source: str | None = None  # llava | hf | shards (null: by path; llavakit.data.sources)
    columns: dict[str, str] | None = None  # hf: LLaVA field -> column, e.g. {conversations: messages}


@dataclass
class VideoDataConfig:
    """Which frames of each video a sample contributes (LLaVA-OneVision: 32, evenly spaced).

    `frames_upbound`: the most frames kept per video; `fps`: frames per second to keep (null:
    evenly spaced over the whole video); `folder_fps`: the frame rate of videos given as frame
    folders, needed to sample them at `fps`. Null takes OneVision's choice; any set needs
    `model.video_token`.
    """

    frames_upbound: int | None = None
    fps: float | None = None
    folder_fps: float | None = None


@dataclass
class DataConfig:
    """The mixture and how samples become batches.

    `image_aspect`: how the fixed image mode (`model.image_mode=fixed`) makes a square of each
    image: `pad` (LLaVA-1.5: pad to a square with the mean colour) or `square` (LLaVA: resize and
    centre-crop); null: `pad`. The grid modes tile each image themselves, so it is an error there.
    `video`: frame sampling for video samples (`VideoDataConfig`).
    `mixture_size`: samples per epoch of a weighted mixture (`datasets.N.weight`); null: the
    records of all datasets after `fraction`. Without weights it scales every dataset alike.
    The draws are made once from `seed`; the sampler shuffles them per epoch (resumable).
    `packing`: several samples per row, no attention across them (fewer pad tokens).
    `group_by_modality`: image and text-only samples in separate batches, similar lengths
    together (LLaVA-1.5's `group_by_modality_length`).
    `streaming`: stream the datasets (tar shards or parquet folders; `llavakit data convert`)
    across ranks and dataloader workers instead of indexing them (`data.streaming`:
    `StreamingShardDataset`): every sample once per epoch, through a seeded shuffle buffer of
    `shuffle_buffer` samples per worker, resumable. Weights, fractions, `mixture_size` and
    `group_by_modality` need random access, so they are errors with it.
    `max_skipped_fraction`: share of bad samples (missing image, over length, ...) above which
    the run stops, in [0, 1] (0: none tolerated). The run stops as soon as the skipped count
    exceeds that share of every sample the run will draw (optimizer steps x global batch, known
    up front), so no epoch is trained in vain; also once `skip_check_min_samples` samples were
    drawn and the share so far is over, and at the end.
    """

    datasets: list[DatasetConfig] = field(default_factory=list)
    template: str = "vicuna_v1"
    image_aspect: str | None = None
    video: VideoDataConfig = field(default_factory=VideoDataConfig)
    max_length: int = 2048
    mixture_size: int | None = None
    packing: bool = False
    group_by_modality: bool = False
    num_workers: int = 0
    seed: int = 0
    streaming: bool = False
    shuffle_buffer: int = 1000
    max_skipped_fraction: float = 0.01
    skip_check_min_samples: int = 1000


@dataclass
class LoraConfig:
    """LoRA on the language model through peft (LLaVA-1.5: r=128, alpha=256).

    `quantize`: `4bit` or `8bit` loads the language model with bitsandbytes (QLoRA; CUDA only).
    """

    enabled: bool = False
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    quantize: str | None = None


@dataclass
class StageConfig:
    """What trains. `name` picks the recipe (`pretrain`, `finetune`); null flags take its defaults."""

    name: str = "finetune"
    train_vision: bool | None = None
    train_connector: bool | None = None
    train_llm: bool | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class OptimizationConfig:
    """Batch, schedule and rates. Null fields come from the stage recipe.

    `global_batch_size` = `per_device_batch_size` x gradient accumulation x world size; the
    accumulation is computed from it (and must come out whole).
    `lr` is the language model's rate; `connector_lr` / `vision_lr` default to it (vision: the
    recipe's own lower rate when it has one). `warmup_ratio`: linear warmup over that share of
    the steps, then `scheduler` (cosine, as LLaVA).
    `precision`: `auto` (bf16 where the GPU supports it, else fp32), `bf16`, `fp16`, `fp32`.
    """

    global_batch_size: int | None = None
    per_device_batch_size: int = 16
    epochs: float | None = None
    max_steps: int = -1
    lr: float | None = None
    connector_lr: float | None = None
    vision_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    optimizer: str = "adamw_torch"
    gradient_checkpointing: bool = True
    precision: str = "auto"
    seed: int = 42


@dataclass
class DistributedConfig:
    """Scale-out settings passed to transformers' Trainer (accelerate underneath).

    Launch with `torchrun --nproc_per_node N -m llavakit.cli train CONFIG` (or `deepspeed`,
    `accelerate launch`); the world size comes from the launcher.
    `deepspeed`: path of a DeepSpeed JSON (configs/deepspeed/zero2.json, zero3.json).
    `fsdp`: true turns on PyTorch FSDP with `fsdp_config` (e.g. configs/fsdp/full_shard.json).
    `find_unused_parameters`: DDP's flag; null = true when the vision tower trains (its last
    layer never gets a gradient) or the connector trains on data with text-only samples.
    """

    deepspeed: str | None = None
    fsdp: bool = False
    fsdp_config: str | None = None
    ddp_backend: str | None = None
    find_unused_parameters: bool | None = None


@dataclass
class OutputConfig:
    """Where the run goes and what it records.

    `dir`: the run folder. A fresh run needs it missing or empty; one that holds an earlier run
    (`train_config.yaml`, `checkpoint-N`) is refused unless `resume` continues it or `overwrite`
    (`llavakit train --overwrite`) replaces it: its files are removed first, so checkpoint
    rotation never mixes two runs. A folder that holds anything else, or this run's own inputs,
    is never emptied.
    `save_steps`: a checkpoint every that many optimizer steps (0: none); each is written to a
    staging folder and renamed into place, so `checkpoint-N` is always complete, and holds the
    run's `train_config.yaml`.
    `resume`: true continues from the newest `checkpoint-N` in `dir`; a path names one. The
    config is checked against the checkpoint's `train_config.yaml`: a change to what the weights
    become (model, data, stage, optimization, DeepSpeed / FSDP) is refused, naming every changed
    key; changes to how the run is saved, logged and reported (all of `output`), and to how fast
    it runs (`data.num_workers`, `optimization.gradient_checkpointing`, DDP settings) or when it
    gives up on bad data (`data.max_skipped_fraction`, `data.skip_check_min_samples`), are
    applied and recorded (`llavakit.train.resume.APPLIED_ON_RESUME`).
    `report_to`: `auto` (TensorBoard / wandb when installed), `none`, or a list.
    `progress_bar`: Trainer's tqdm bar with the latest loss; the per-step log dicts are never printed.
    `plot`: write `loss.png` (matplotlib) at the end.
    `merge_lora`: also write the LoRA-merged full model to `dir/merged` at the end.
    """

    dir: str = "runs/llavakit"
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 1
    report_to: Any = union_field("auto", _is_report_to, "a string or a list of strings")
    resume: Any = union_field(False, _is_resume, "true, false or the path of a checkpoint")
    progress_bar: bool = True
    plot: bool = True
    merge_lora: bool = False
    run_name: str | None = None
    overwrite: bool = False


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ---- files -------------------------------------------------------------------------------------


def recipe_layers(path: Path) -> list[Layer]:
    """A recipe file as merge layers: the model spec its `model` section includes first, then the file."""
    data = read_yaml(path)
    model = data.get("model")
    if not isinstance(model, Mapping):
        return [(path, data)]
    rest = {key: value for key, value in data.items() if key != "model"}
    return [*((source, {"model": spec}) for source, spec in model_spec_layers(model, path)), (path, rest)]


# Keys an earlier schema had, with where their values go now.
_RENAMED_KEYS = {
    "data.image_mode": "data.image_aspect (pad | square, the fixed mode's squaring) "
    "or model.image_mode (fixed | hd | anyres | anyres_max_N)",
    "model.video_pool_mode": "model.video.pool_mode",
    "model.video_pool_stride": "model.video.pool_stride",
    "model.video_newline": "model.video.newline",
}


def _renamed_key_hint(message: str) -> str:
    return "".join(f" ({old} is now {new})" for old, new in _RENAMED_KEYS.items() if f"'{old}'" in message)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or start from defaults when `path` is None) and apply `key=value` overrides.

    Raises `ConfigError` for an unknown key, a value of the wrong kind, or one that cannot work
    (`check_values`).
    """
    try:
        layers = recipe_layers(Path(path)) if path is not None else []
        config = load_structured(TrainConfig, layers, list(overrides or []))
    except ValueError as error:  # one line, even when it quotes a YAML parser's several
        message = " ".join(str(error).split())
        raise ConfigError(message + _renamed_key_hint(message)) from None
    check_values(config)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass tree as plain dicts and lists (what YAML writes)."""
    return dataclasses.asdict(config)


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write `config` as YAML (it loads back to an equal config)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(config_to_yaml(config), encoding="utf-8")


def save_run_config(config: TrainConfig, path: str | Path) -> None:
    """Write the config a run folder records: `output.overwrite` is how the run started, not a
    setting, so it is recorded false (training from the recorded file never deletes the run)."""
    save_config(dataclasses.replace(config, output=dataclasses.replace(config.output, overwrite=False)), path)


__all__ = [
    "CONFIG_NAME",
    "PRECISIONS",
    "DataConfig",
    "DatasetConfig",
    "DistributedConfig",
    "LoraConfig",
    "OptimizationConfig",
    "OutputConfig",
    "StageConfig",
    "TrainConfig",
    "VideoDataConfig",
    "check_values",
    "config_to_yaml",
    "load_config",
    "recipe_layers",
    "save_config",
    "save_run_config",
    "to_dict",
]
