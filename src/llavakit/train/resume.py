"""Resume checks: a resumed run continues the run its checkpoint belongs to, or says why it cannot.

A checkpoint holds one run's weights, optimizer and scheduler state, random state and data
position, and (`train_config.yaml`) the config that run used. Resuming with another config would
keep part of the old run silently (the optimizer's rates, the schedule's length, the data order)
while the run folder recorded the new one. So the new config is compared with the checkpoint's,
key by key, before the model is built:

* a change to what the weights become is refused with `ResumeMismatchError`, naming every changed
  key with its old and new value: the model, the data (mixture, template, images, length, packing,
  grouping, seed), the stage, every optimization setting (rates, batch sizes, schedule, warmup,
  epochs / max_steps, precision, seed, clipping, optimizer), DeepSpeed / FSDP;
* a change that leaves the weights as they would have been is applied (`APPLIED_ON_RESUME`), and
  `train_config.yaml` of the run folder and of every later checkpoint records it.

A checkpoint without its own `train_config.yaml` (written before checkpoints held one) is compared
with the run folder's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llavakit.errors import CheckpointError, ConfigError, ResumeMismatchError
from llavakit.train.config import CONFIG_NAME, TrainConfig, load_config, to_dict

logger = logging.getLogger(__name__)

# Keys (and sections) a resumed run may change: how the run is saved, logged and reported, how
# fast it runs, and when it gives up on bad data. None of them changes the weights.
APPLIED_ON_RESUME = (
    "output",
    "data.num_workers",
    "data.max_skipped_fraction",
    "data.skip_check_min_samples",
    "optimization.gradient_checkpointing",
    "distributed.ddp_backend",
    "distributed.find_unused_parameters",
)
_ABSENT = "(not set)"
# How this run was started, not a setting of the run: not reported as a change.
_NOT_SETTINGS = ("output.resume", "output.overwrite")


def applied_on_resume(key: str) -> bool:
    """Whether a resumed run may change `key` (a dotted config key)."""
    return any(key == safe or key.startswith(safe + ".") for safe in APPLIED_ON_RESUME)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf of nested mappings and lists of mappings."""
    if isinstance(value, Mapping):
        items = [(str(key), item) for key, item in value.items()]
    elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
        items = [(str(index), item) for index, item in enumerate(value)]
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    return flat


def config_changes(old: TrainConfig, new: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf that differs, in the schema's order."""
    before, after = flatten(to_dict(old)), flatten(to_dict(new))
    keys = list(before) + [key for key in after if key not in before]
    return [
        (key, before.get(key, _ABSENT), after.get(key, _ABSENT))
        for key in keys
        if before.get(key, _ABSENT) != after.get(key, _ABSENT)
    ]


def _shown(value: Any) -> str:
    return value if value is _ABSENT else json.dumps(value, default=str)


def describe_change(key: str, old: Any, new: Any) -> str:
    return f"{key}: {_shown(old)} -> {_shown(new)}"


def saved_config_path(checkpoint: Path) -> Path | None:
    """The config the checkpoint's run used: its own copy, else the run folder's."""
    for path in (checkpoint / CONFIG_NAME, checkpoint.parent / CONFIG_NAME):
        if path.is_file():
            return path
    return None


def load_saved_config(path: Path) -> TrainConfig:
    try:
        return load_config(path)
    except ConfigError as error:
        raise CheckpointError(f"{path} cannot be read as the checkpoint's config: {error}") from None


def check_resume(config: TrainConfig, checkpoint: Path) -> list[str]:
    """Refuse a resolved `config` that changes what the checkpoint's run would have trained.

    Returns the applied changes as `key: old -> new` lines (also logged).
    """
    path = saved_config_path(checkpoint)
    if path is None:
        logger.warning("%s holds no %s: the config cannot be checked against it", checkpoint, CONFIG_NAME)
        return []
    changes = config_changes(load_saved_config(path), config)
    refused = [describe_change(*change) for change in changes if not applied_on_resume(change[0])]
    if refused:
        raise ResumeMismatchError(
            f"cannot resume {checkpoint} with a changed config: {'; '.join(refused)}. A resumed run keeps the "
            f"checkpoint's weights, optimizer, schedule and data order, so these must stay as {path} has them; "
            "start a new run (another output.dir, or --overwrite) to train with them"
        )
    applied = [describe_change(*change) for change in changes if change[0] not in _NOT_SETTINGS]
    for line in applied:
        logger.info("resuming with a changed setting: %s", line)
    return applied


__all__ = [
    "APPLIED_ON_RESUME",
    "applied_on_resume",
    "check_resume",
    "config_changes",
    "describe_change",
    "flatten",
    "load_saved_config",
    "saved_config_path",
]
