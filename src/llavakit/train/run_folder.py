"""Everything a run checks before it builds the model: the run folder, the inputs, the checkpoint.

A mistake found here costs a second instead of the minutes (or hours) spent loading backbones
and data first, and nothing is deleted until every check has passed:

* `output.dir` must be a folder that can be written (not a file, not under one). A fresh run
  needs it missing or empty; earlier work in it is refused unless `output.resume` continues it
  or `output.overwrite` (`llavakit train --overwrite`) replaces it. Overwrite empties the folder
  (`open_run_folder`, once the model and data are built) so checkpoint rotation cannot keep an
  old run's checkpoints beside the new one's, and only a folder that holds an earlier llavakit
  run and none of this run's inputs.
* The dataset files, image folders, `model.checkpoint` and `model.connector_weights` exist and
  are what they should be.
* On resume: the checkpoint is complete and intact (`checkpoint_files`), and the config changes
  nothing it cannot honour (`resume`).

Under torchrun every rank checks; only the main process (RANK 0) judges whether the folder is
free and empties it, so a rank never mistakes the files another rank has just written for an
earlier run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from llavakit.data.records import DatasetSpec
from llavakit.data.sources import source_of
from llavakit.errors import CheckpointError, ConfigError, DataError, OutputExistsError, OutputPathError
from llavakit.output_paths import check_clear_of_inputs, check_writable_dir, prepare_output_dir
from llavakit.train.checkpoint_files import verify_model_folder, verify_resume_checkpoint
from llavakit.train.config import CONFIG_NAME, TrainConfig
from llavakit.train.model_setup import check_trainable_weights
from llavakit.train.resume import check_resume
from llavakit.train.trainer import STAGING_DIR

_SHOWN_ENTRIES = 4


def is_main_process() -> bool:
    """Whether this process is the launcher's rank 0 (or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


def holds_a_run(folder: Path) -> bool:
    """Whether `folder` holds an earlier llavakit run: its config, a checkpoint or a staged one."""
    return (
        (folder / CONFIG_NAME).is_file()
        or (folder / STAGING_DIR).is_dir()
        or any(path.is_dir() for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"))
    )


def _entries(folder: Path) -> str:
    names = sorted(path.name for path in folder.iterdir())
    shown = ", ".join(names[:_SHOWN_ENTRIES]) + (", ..." if len(names) > _SHOWN_ENTRIES else "")
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}: {shown}"


def _local_inputs(config: TrainConfig) -> Iterator[tuple[str, Path]]:
    """(key, path) of every input of the run that is a local file or folder."""
    for index, dataset in enumerate(config.data.datasets):
        yield f"data.datasets.{index}.path", Path(dataset.path)
        if dataset.image_folder is not None:
            yield f"data.datasets.{index}.image_folder", Path(dataset.image_folder)
    model = config.model
    for key in ("checkpoint", "connector_weights", "vision", "language", "tokenizer"):
        value = getattr(model, key)
        if isinstance(value, str) and Path(value).exists():
            yield f"model.{key}", Path(value)
    for key in ("deepspeed", "fsdp_config"):
        value = getattr(config.distributed, key)
        if value is not None:
            yield f"distributed.{key}", Path(value)


def _continues_its_own_run(config: TrainConfig, folder: Path) -> bool:
    """Whether the run resumes a checkpoint of `folder` itself (`output.resume=true`, or a path in it)."""
    resume = config.output.resume
    if resume is True:
        return True
    return isinstance(resume, str) and Path(resume).resolve().parent == folder.resolve()


def _check_permission(folder: Path) -> None:
    """The folder, or the nearest existing folder above it, lets this user create files."""
    existing = next((path for path in (folder, *folder.absolute().parents) if path.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"output.dir {folder}: {existing} is not writable by this user")


def check_output_dir(config: TrainConfig, main_process: bool = True) -> Path:
    """`output.dir` can take this run (see the module docstring); nothing is changed yet."""
    folder = check_writable_dir(config.output.dir, "output.dir")
    _check_permission(folder)
    if _continues_its_own_run(config, folder) or not main_process:
        return folder
    if not folder.is_dir() or not any(folder.iterdir()):
        return folder
    if config.output.resume not in (False, None):
        raise OutputExistsError(
            f"output.dir {folder} already holds earlier work ({_entries(folder)}) and is not the run folder of "
            f"output.resume={config.output.resume}; continue into an empty output.dir, or into the checkpoint's own"
        )
    if not config.output.overwrite:
        raise OutputExistsError(
            f"output.dir {folder} already holds earlier work ({_entries(folder)}); pass --overwrite "
            "(output.overwrite=true) to replace it, output.resume=true to continue it, or choose another output.dir"
        )
    if not holds_a_run(folder):
        raise OutputExistsError(
            f"output.dir {folder} holds files that are not a llavakit run ({_entries(folder)}); --overwrite "
            "replaces only an earlier run's folder: choose an empty or new output.dir"
        )
    inputs = ((f"this run's input {key}", path) for key, path in _local_inputs(config) if path.exists())
    return check_clear_of_inputs(folder, inputs, "output.dir")


def find_resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint `output.resume` names (true: the newest `checkpoint-N` in `output.dir`), or None."""
    resume = config.output.resume
    if resume is False or resume is None:
        return None
    if resume is True:
        folder = Path(config.output.dir)
        found = get_last_checkpoint(str(folder)) if folder.is_dir() else None
        if found is None:
            raise CheckpointError(f"output.resume=true but {folder} holds no checkpoint-N folder to resume from")
        return Path(found)
    if not Path(resume).is_dir():
        raise CheckpointError(f"output.resume: checkpoint folder {resume} does not exist")
    return Path(resume)


def _step(checkpoint: Path) -> int:
    suffix = checkpoint.name.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else -1


def check_checkpoint(checkpoint: Path) -> None:
    """The checkpoint to resume is intact; if not, the error points at the newest earlier one."""
    try:
        verify_resume_checkpoint(checkpoint)
    except CheckpointError as error:
        earlier = [
            path
            for path in checkpoint.parent.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
            if path.is_dir() and 0 <= _step(path) < _step(checkpoint)
        ]
        if not earlier:
            raise
        newest = max(earlier, key=_step)
        raise CheckpointError(f"{error}; an earlier checkpoint may be intact: output.resume={newest}") from None


def check_inputs(config: TrainConfig) -> None:
    """The datasets, image folders and model weights the run reads exist and are what they should be."""
    if not config.data.datasets:
        raise ConfigError("data.datasets is empty: list at least one LLaVA-format .json / .jsonl file")
    for index, dataset in enumerate(config.data.datasets):
        source = source_of(DatasetSpec(dataset.path, source=dataset.source))
        path = Path(dataset.path)
        # LLaVA JSON is a file; shards and parquet may be a folder; an hf name not on disk is a hub name.
        if source == "llava" and not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise DataError(f"data.datasets.{index}.path: dataset file {dataset.path} {what}")
        if source == "shards" and not path.exists():
            raise DataError(f"data.datasets.{index}.path: shard file or folder {dataset.path} does not exist")
        if dataset.image_folder is not None and not Path(dataset.image_folder).is_dir():
            raise DataError(f"data.datasets.{index}.image_folder: {dataset.image_folder} is not a folder")
    if config.model.checkpoint is not None:
        verify_model_folder(config.model.checkpoint, "model.checkpoint")
    if config.model.connector_weights is not None:
        check_trainable_weights(config.model.connector_weights, "model.connector_weights")


def prepare_run(config: TrainConfig) -> Path | None:
    """Check everything (module docstring) and return the checkpoint to resume, or None; nothing is written.

    `config` must be resolved (`recipes.resolve_config`).
    """
    check_output_dir(config, is_main_process())
    resume = find_resume_checkpoint(config)
    check_inputs(config)
    if resume is not None:
        check_checkpoint(resume)
        check_resume(config, resume)
    return resume


def open_run_folder(config: TrainConfig) -> Path:
    """Create `output.dir`, or with `output.overwrite` empty it (checked by `prepare_run`: an earlier run
    holding none of this run's inputs). Called once the model and data are built, so an earlier run is
    removed only when the new one is ready to start; the main process does it."""
    folder = Path(config.output.dir)
    if is_main_process() and config.output.overwrite:
        prepare_output_dir(folder, overwrite=True)
    elif is_main_process():
        folder.mkdir(parents=True, exist_ok=True)
    return folder


__all__ = [
    "check_checkpoint",
    "check_inputs",
    "check_output_dir",
    "find_resume_checkpoint",
    "holds_a_run",
    "is_main_process",
    "open_run_folder",
    "prepare_run",
]
