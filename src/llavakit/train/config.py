"""Training configuration: nested dataclasses, serialised as YAML, overridden with dotted `key=value`.

One section per concern, so a recipe reads top to bottom and code passes whole sections
around instead of dozens of keyword arguments:

    model:         what to build (backbones, connector, tokenizer) or load (checkpoint, stage-1 weights)
    data:          the dataset mixture, conversation template, image recipe, length, packing, grouping
    stage:         what trains (`pretrain` / `finetune` recipes, vision tower, LoRA / QLoRA)
    optimization:  batch sizes, epochs, learning rates per part, schedule, precision, seed
    distributed:   DeepSpeed / FSDP / DDP settings handed to transformers' Trainer
    output:        run folder, checkpoints, logging, resume

    config = load_config("configs/llava-1.5/finetune-7b.yaml", ["optimization.lr=1e-5", "data.packing=true"])

Override values are parsed as YAML (`true`, `[1, 2]`, `{a: 1}`); list items are addressed by
index (`data.datasets.0.fraction=0.5`). A key that no dataclass declares raises ValueError
naming it, in files and overrides alike, so a typo never silently trains with a default.
Fields left `null` in `optimization` are filled from the stage recipe by
`llavakit.train.recipes.resolve_config`; the resolved config is what each run folder records.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


@dataclass
class ModelConfig:
    """What the model is made of.

    `vision` / `language`: a hub name or local folder (pretrained weights), or a config dict
    with a `model_type` key (random weights: the tiny recipes). `tokenizer`: a hub name or
    folder, `tiny` for the in-process tiny tokenizer, or null for the language model's.
    `checkpoint`: start from a saved llavakit model folder instead (its processor too).
    `connector_weights`: a stage-1 run folder (or its `trainable.safetensors`) whose weights are
    loaded after building, as LLaVA's `--pretrain_mm_mlp_adapter`.
    """

    vision: str | dict | None = None
    language: str | dict | None = None
    tokenizer: str | None = None
    connector: str = "mlp2x_gelu"
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    image_token: str = "<image>"
    checkpoint: str | None = None
    connector_weights: str | None = None
    dtype: str | None = None
    attn_implementation: str | None = None


@dataclass
class DatasetConfig:
    """One dataset of the mixture (fields of `llavakit.data.dataset.DatasetSpec`)."""

    path: str = ""
    image_folder: str | None = None
    fraction: float = 1.0
    response_format_prompt: str | None = None
    name: str | None = None


@dataclass
class DataConfig:
    """The mixture and how samples become batches.

    `image_mode`: `pad` (LLaVA-1.5) or `square` (resize + centre crop, LLaVA).
    `packing`: several samples per row, no attention across them (fewer pad tokens).
    `group_by_modality`: image and text-only samples in separate batches, similar lengths
    together (LLaVA-1.5's `group_by_modality_length`).
    `max_skipped_fraction`: share of bad samples (missing image, over length, ...) above which
    the run stops; checked once `skip_check_min_samples` samples have been drawn, and at the end.
    """

    datasets: list[DatasetConfig] = field(default_factory=list)
    template: str = "vicuna_v1"
    image_mode: str = "pad"
    max_length: int = 2048
    packing: bool = False
    group_by_modality: bool = False
    num_workers: int = 0
    seed: int = 0
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

    `save_steps`: a checkpoint every that many optimizer steps (0: none); each is written to a
    staging folder and renamed into place, so `checkpoint-N` is always complete.
    `resume`: true continues from the newest `checkpoint-N` in `dir`; a path names one.
    `report_to`: `auto` (TensorBoard / wandb when installed), `none`, or a list.
    `progress_bar`: Trainer's tqdm bar with the latest loss; the per-step log dicts are never printed.
    `plot`: write `loss.png` (matplotlib) at the end.
    `merge_lora`: also write the LoRA-merged full model to `dir/merged` at the end.
    """

    dir: str = "runs/llavakit"
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 1
    report_to: str | list[str] = "auto"
    resume: bool | str = False
    progress_bar: bool = True
    plot: bool = True
    merge_lora: bool = False
    run_name: str | None = None


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ---- dict <-> dataclass ------------------------------------------------------------------------


def _name(path: str) -> str:
    return path or "<root>"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, path: str) -> Any:
    """`value` as type `tp`, or ValueError naming `path`. Numeric strings become numbers (YAML reads 2e-5 as text)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        choices = [o for o in options if o is not type(None)]
        if len(choices) == 1:  # `X | None`: X's own message says best what is wrong
            return _convert(value, choices[0], path)
        # Exact-kind matches first, so `1` stays an int in `int | list[int]` and `"x"` a str in `str | dict`.
        for option in sorted(choices, key=lambda o: _rank(value, o)):
            try:
                return _convert(value, option, path)
            except ValueError:
                continue
        raise ValueError(f"config key '{_name(path)}': {value!r} matches none of {_type_name(tp)}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config key '{_name(path)}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{_name(path)}' must be a list, got {value!r}")
        return [_convert(v, item, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key '{_name(path)}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key '{_name(path)}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"config key '{_name(path)}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"config key '{_name(path)}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"config key '{_name(path)}' must be a string, got {value!r}")
    raise TypeError(f"config key '{_name(path)}' has an unsupported type {tp!r}")


def _rank(value: Any, option: Any) -> int:
    """0 when `value` already has the kind `option` expects (tried first), else 1."""
    base = typing.get_origin(option) or option
    kinds = {bool: (bool,), int: (int,), float: (float, int), str: (str,), list: (list, tuple), dict: (dict,)}
    if _is_dataclass_type(option):
        return 0 if isinstance(value, dict) else 1
    expected = kinds.get(base)
    if expected is None:
        return 1
    if base in (int, float) and isinstance(value, bool):
        return 1
    return 0 if isinstance(value, expected) else 1


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a (YAML) mapping; unknown keys raise ValueError naming them."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        section = f"'{path}'" if path else "the top level"
        raise ValueError(f"unknown config key '{where}'; {section} has: {', '.join(names)}")
    values = {key: _convert(value, hints[key], f"{path}.{key}" if path else key) for key, value in data.items()}
    return cls(**values)


def to_dict(config: Any) -> Any:
    """A dataclass tree as plain dicts and lists (what YAML writes)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


# ---- overrides ---------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override {text!r} must look like key=value (e.g. optimization.lr=2e-5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str], schema: type = TrainConfig) -> dict[str, Any]:
    """Set dotted keys in the raw mapping `data` (copied); keys are checked against `schema`'s fields."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node, tp = data, schema
        for depth, key in enumerate(keys):
            dotted = ".".join(keys[: depth + 1])
            last = depth == len(keys) - 1
            tp = _unwrap_optional(tp)
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ValueError(f"override '{text}': '{dotted}' is not an index of a list of {len(node)} item(s)")
                index = int(key)
                tp = (typing.get_args(tp) or (Any,))[0]
                if last:
                    node[index] = value
                else:
                    node = node[index]
                continue
            if _is_dataclass_type(tp):
                hints = _hints(tp)
                if key not in hints:
                    raise ValueError(
                        f"unknown config key '{dotted}' in override '{text}'; "
                        f"'{'.'.join(keys[:depth]) or 'the top level'}' has: {', '.join(hints)}"
                    )
                tp = hints[key]
            elif not isinstance(node, dict):
                raise ValueError(f"override '{text}': '{'.'.join(keys[:depth])}' holds no keys")
            else:
                tp = Any
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = [] if typing.get_origin(_unwrap_optional(tp)) is list else {}
                node = node[key]
    return data


def _unwrap_optional(tp: Any) -> Any:
    """`X | None` -> X when X is a dataclass or list (the kinds overrides descend into)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        nested = [o for o in options if _is_dataclass_type(o) or typing.get_origin(o) in (list, dict) or o is dict]
        if len(nested) == 1:
            return nested[0]
    return tp


# ---- files -------------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or start from defaults when `path` is None) and apply `key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ValueError(f"config file {path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    data = apply_overrides(data, list(overrides or []))
    try:
        return from_dict(TrainConfig, data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}" if path is not None else str(error)) from None


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write `config` as YAML (it loads back to an equal config)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(config_to_yaml(config), encoding="utf-8")


__all__ = [
    "DataConfig",
    "DatasetConfig",
    "DistributedConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimizationConfig",
    "OutputConfig",
    "StageConfig",
    "TrainConfig",
    "apply_overrides",
    "config_to_yaml",
    "from_dict",
    "load_config",
    "parse_override",
    "save_config",
    "to_dict",
]
