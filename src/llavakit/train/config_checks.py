"""Values a training config cannot work with, refused when it is loaded and again when resolved.

`check_values(config)` raises one `ConfigError` naming every bad key with what it must be and
what it got, so a value that cannot work fails in a second instead of after the model was built,
or worse, in a run that trains nothing and writes an untrained "final" model (`epochs=-1`):

    config key 'optimization.epochs' must be a finite number >= 0, or null for the stage's, got inf

Null `optimization` values pass (the stage recipe fills them, `recipes.resolve_config`, which
checks again). The schema itself is `llavakit.train.config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce
from typing import TYPE_CHECKING, Any

from llavakit.errors import ConfigError
from llavakit.model.build import mode_problems

if TYPE_CHECKING:
    from llavakit.train.config import DataConfig, TrainConfig

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


Check = Callable[[Any], bool]


def _at_least(low: float) -> Check:
    return lambda value: isinstance(value, (int, float)) and math.isfinite(value) and value >= low


def _share(closed_low: bool = True, closed_high: bool = True) -> Check:
    def check(value: Any) -> bool:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return (value >= 0 if closed_low else value > 0) and (value <= 1 if closed_high else value < 1)

    return check


def _above(low: float) -> Check:
    return lambda value: isinstance(value, (int, float)) and math.isfinite(value) and value > low


def _optional(check: Check) -> Check:
    return lambda value: value is None or check(value)


_RATE = "a finite number >= 0, or null for the stage recipe's"
_VALUE_RULES: tuple[tuple[str, Check, str], ...] = (
    ("data.max_length", _at_least(1), "a whole number >= 1 (tokens per sample)"),
    ("data.num_workers", _at_least(0), "a whole number >= 0"),
    ("data.shuffle_buffer", _at_least(1), "a whole number >= 1 (samples per worker; 1: file order)"),
    ("data.max_skipped_fraction", _share(), "a share in [0, 1] (0: no bad sample tolerated)"),
    ("data.skip_check_min_samples", _at_least(0), "a whole number >= 0"),
    ("stage.lora.r", _at_least(1), "a whole number >= 1"),
    ("stage.lora.alpha", _above(0), "a number > 0"),
    ("stage.lora.dropout", _share(closed_high=False), "a share in [0, 1)"),
    ("optimization.global_batch_size", _optional(_at_least(1)), "a whole number >= 1, or null for the stage's"),
    ("optimization.per_device_batch_size", _at_least(1), "a whole number >= 1"),
    ("optimization.epochs", _optional(_at_least(0)), "a finite number >= 0, or null for the stage's"),
    ("optimization.max_steps", _at_least(-1), "-1 or 0 (train by epochs), or a number of optimizer steps"),
    ("optimization.lr", _optional(_at_least(0)), _RATE),
    ("optimization.connector_lr", _optional(_at_least(0)), _RATE),
    ("optimization.vision_lr", _optional(_at_least(0)), _RATE),
    ("optimization.weight_decay", _at_least(0), "a finite number >= 0"),
    ("optimization.warmup_ratio", _share(closed_high=False), "a share of the steps in [0, 1)"),
    ("optimization.max_grad_norm", _at_least(0), "a finite number >= 0 (0: no clipping)"),
    ("optimization.precision", lambda value: value in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    ("optimization.seed", lambda value: 0 <= value < 2**32, "a whole number in [0, 2**32)"),
    ("output.dir", lambda value: bool(str(value).strip()), "a folder path"),
    ("output.save_steps", _at_least(0), "a whole number >= 0 (0: no checkpoints)"),
    ("output.save_total_limit", _optional(_at_least(1)), "a whole number >= 1, or null to keep every checkpoint"),
    ("output.logging_steps", _at_least(1), "a whole number >= 1"),
)


def _value_at(config: TrainConfig, key: str) -> Any:
    return reduce(getattr, key.split("."), config)


def _must_be(key: str, expects: str, value: Any) -> str:
    return f"config key '{key}' must be {expects}, got {value!r}"


DATASET_FORMATS = ("conversation", "interleaved", "text")
DATASET_SOURCES = ("llava", "hf", "shards")


def _dataset_problems(config: TrainConfig) -> list[str]:
    problems = []
    for index, dataset in enumerate(config.data.datasets):
        key = f"data.datasets.{index}"
        if not str(dataset.path).strip():
            expects = "the path of a .json/.jsonl file, a parquet/arrow folder or tar shards"
            problems.append(_must_be(f"{key}.path", expects, dataset.path))
        if not _share(closed_low=False)(dataset.fraction):  # downsampling only
            problems.append(_must_be(f"{key}.fraction", "a share of the records in (0, 1]", dataset.fraction))
        if not _optional(_at_least(0))(dataset.weight):
            problems.append(
                _must_be(f"{key}.weight", "a finite number >= 0 (a share of the draws), or null", dataset.weight)
            )
        if dataset.format is not None and dataset.format not in DATASET_FORMATS:
            expects = f"one of {', '.join(DATASET_FORMATS)}, or null (detected per record)"
            problems.append(_must_be(f"{key}.format", expects, dataset.format))
        if dataset.source is not None and dataset.source not in DATASET_SOURCES:
            expects = f"one of {', '.join(DATASET_SOURCES)}, or null (by path)"
            problems.append(_must_be(f"{key}.source", expects, dataset.source))
        if dataset.columns and dataset.source not in (None, "hf"):
            problems.append(_must_be(f"{key}.columns", "null unless source is hf", dataset.columns))
    return problems + _mixture_problems(config.data) + _streaming_problems(config.data)


def _streaming_problems(data: DataConfig) -> list[str]:
    """What a stream cannot do: it reads each file once in order, so nothing that needs random access."""
    if not data.streaming:
        return []
    problems = []
    needs = "needs random access, which data.streaming=true does not give (convert or subsample the data instead)"
    for index, dataset in enumerate(data.datasets):
        if dataset.weight is not None:
            problems.append(f"data.datasets.{index}.weight={dataset.weight} {needs}")
        if dataset.fraction != 1.0:
            problems.append(f"data.datasets.{index}.fraction={dataset.fraction} {needs}")
    if data.mixture_size is not None:
        problems.append(f"data.mixture_size={data.mixture_size} {needs}")
    if data.group_by_modality:
        problems.append(f"data.group_by_modality=true {needs}")
    return problems


def _mixture_problems(data: DataConfig) -> list[str]:
    """Weights are given for every dataset or none, and not all 0; the epoch has at least one draw."""
    problems = []
    if not _optional(_at_least(1))(data.mixture_size):
        problems.append(
            _must_be("data.mixture_size", "a whole number >= 1 (draws per epoch), or null", data.mixture_size)
        )
    weights = [dataset.weight for dataset in data.datasets]
    missing = [f"data.datasets.{index}.weight" for index, weight in enumerate(weights) if weight is None]
    if missing and len(missing) < len(weights):
        problems.append(
            f"{', '.join(missing)} null while other datasets have a weight: give every dataset a weight, or none"
        )
    given = [weight for weight in weights if weight is not None]
    if given and not missing and all(_at_least(0)(weight) for weight in given) and sum(given) == 0:
        problems.append("data.datasets.N.weight are all 0: at least one dataset needs a weight > 0")
    return problems


def _name_problems(config: TrainConfig) -> list[str]:
    """Names that must be in a registry: conversation template, scheduler, optimizer."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from llavakit.processing.templates import TEMPLATES

    registries = (
        ("data.template", config.data.template, sorted(TEMPLATES)),
        ("optimization.scheduler", config.optimization.scheduler, [kind.value for kind in SchedulerType]),
        ("optimization.optimizer", config.optimization.optimizer, [name.value for name in OptimizerNames]),
    )
    return [
        _must_be(key, f"one of {', '.join(known)}", value) for key, value, known in registries if value not in known
    ]


def _combination_problems(config: TrainConfig) -> list[str]:
    optim, output = config.optimization, config.output
    problems = []
    if optim.epochs == 0 and optim.max_steps <= 0:
        problems.append(
            "optimization.epochs=0 with optimization.max_steps<=0 trains nothing: set epochs > 0 or max_steps >= 1"
        )
    if output.overwrite and output.resume not in (False, None):
        problems.append(
            "output.overwrite=true and output.resume exclude each other: resume continues the run in "
            f"{output.dir}, overwrite deletes it"
        )
    return problems


IMAGE_ASPECTS = ("pad", "square")


def data_mode_problems(data: DataConfig, image_mode: str, has_video: bool, model_key: str = "model") -> list[str]:
    """Data keys that an `image_mode` model (with or without video input) never reads, naming both sides."""
    problems = []
    if data.image_aspect is not None and image_mode != "fixed":
        problems.append(
            f"data.image_aspect={data.image_aspect!r} (how the fixed mode squares an image) does not apply to "
            f"{model_key}.image_mode={image_mode!r}, which tiles each image itself: remove data.image_aspect"
        )
    if not has_video:
        video = f"needs video input, but {model_key}.video_token is null"
        problems += [
            f"data.video.{key}={value!r} {video}" for key, value in vars(data.video).items() if value is not None
        ]
        problems += [
            f"data.datasets.{index}.video_folder={dataset.video_folder!r} {video}"
            for index, dataset in enumerate(data.datasets)
            if dataset.video_folder is not None
        ]
    return problems


def _mode_problems(config: TrainConfig) -> list[str]:
    """Keys the model's image mode or lack of video never reads (a `model.checkpoint` is checked once loaded)."""
    data, model = config.data, config.model
    problems = []
    if data.image_aspect is not None and data.image_aspect not in IMAGE_ASPECTS:
        problems.append(_must_be("data.image_aspect", f"one of {', '.join(IMAGE_ASPECTS)}, or null", data.image_aspect))
    video = data.video
    if video.frames_upbound is not None and not _at_least(1)(video.frames_upbound):
        problems.append(_must_be("data.video.frames_upbound", "a whole number >= 1, or null", video.frames_upbound))
    for key in ("fps", "folder_fps"):
        if getattr(video, key) is not None and not _above(0)(getattr(video, key)):
            problems.append(_must_be(f"data.video.{key}", "a number > 0, or null", getattr(video, key)))
    if model.checkpoint is None:
        problems += mode_problems(model) + data_mode_problems(data, model.image_mode, model.video_token is not None)
    return problems


def check_values(config: TrainConfig) -> None:
    """Raise `ConfigError` naming every key whose value cannot work (null optimization values pass)."""
    problems = [
        _must_be(key, expects, value)
        for key, check, expects in _VALUE_RULES
        if not check(value := _value_at(config, key))
    ]
    problems += _dataset_problems(config) + _name_problems(config) + _combination_problems(config)
    problems += _mode_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))


__all__ = ["DATASET_FORMATS", "IMAGE_ASPECTS", "PRECISIONS", "check_values", "data_mode_problems"]
