"""Checkpoint files checked before a run trusts them: a damaged file is named, not a torch traceback.

llavakit never leaves a half-written `checkpoint-N` (each is renamed into place complete), but
disks fill, copies are cut short and files get edited by hand. Before a resume (and before a run
loads `model.connector_weights`) every file it will read is checked by kind; `model.checkpoint`
is checked as every command checks a model folder (`llavakit.model.checkpoint`):

* `.safetensors`: the header parses and covers the file exactly (a truncated file fails);
* `.pt` / `.pth` / `.bin` in a checkpoint (`torch.save`'s zip archives): the archive's directory
  reads and every member matches its CRC, which catches truncation and changed bytes (torch.load
  checks neither: a flipped byte loads as a wrong number);
* `.json`: parses (`trainer_state.json` must also say how far the run got).

A safetensors file carries no checksum, so bytes changed inside a tensor go unnoticed. Reading
every torch archive once costs about a second per GB, small next to the run it resumes.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from llavakit.errors import CheckpointError
from llavakit.model.checkpoint import check_checkpoint_folder

TRAINER_STATE_NAME = "trainer_state.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def verify_safetensors(path: Path) -> None:
    """The header of `path` parses and its tensors cover the file exactly."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is truncated or damaged: not a readable safetensors file ({error})") from None


def verify_torch_archive(path: Path) -> None:
    """`path` is a complete `torch.save` zip archive whose members all match their checksums."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"{path} is truncated or damaged: not a complete torch file ({error})") from None
    if bad_member is not None:
        raise CheckpointError(f"{path} is damaged: its part {bad_member} fails its checksum")


def verify_json(path: Path) -> Any:
    """The parsed content of the JSON file `path`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is truncated or damaged: not valid JSON ({error})") from None


def verify_file(path: Path) -> None:
    """Check `path` by its kind (see the module docstring); files of other kinds pass."""
    if path.suffix == ".safetensors":
        verify_safetensors(path)
    elif path.suffix in TORCH_SUFFIXES:
        verify_torch_archive(path)
    elif path.suffix == ".json":
        verify_json(path)


def verify_resume_checkpoint(folder: Path) -> None:
    """A `checkpoint-N` folder that a resume can continue from: its state and every file intact."""
    if not folder.is_dir():
        raise CheckpointError(f"output.resume: checkpoint folder {folder} does not exist")
    state_file = folder / TRAINER_STATE_NAME
    if not state_file.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: {TRAINER_STATE_NAME} is missing")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        verify_file(path)
    state = verify_json(state_file)
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise CheckpointError(f"{state_file} is damaged: it does not say the step the run reached (global_step)")


def verify_model_folder(folder: str | Path, key: str = "model.checkpoint") -> Path:
    """`folder` as an intact llavakit model folder (`llavakit.model.checkpoint`), errors prefixed by `key`."""
    try:
        return check_checkpoint_folder(folder, "checkpoint folder")
    except CheckpointError as error:
        raise CheckpointError(f"{key}: {error}") from None


__all__ = [
    "TRAINER_STATE_NAME",
    "verify_file",
    "verify_json",
    "verify_model_folder",
    "verify_resume_checkpoint",
    "verify_safetensors",
    "verify_torch_archive",
]
