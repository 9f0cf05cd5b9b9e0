"""Checkpoint files checked before a run trusts them: a damaged file is named, not a torch traceback.

llavakit never leaves a half-written `checkpoint-N` (each is renamed into place complete), but
disks fill, copies are cut short and files get edited by hand. Before a resume (and before a run
loads `model.connector_weights`) every file it will read is checked by kind, with the checks
of `llavakit.model.checkpoint` (torch archives with their checksums); `model.checkpoint` is
checked as every command checks a model folder:

* `.safetensors`: the header parses and covers the file exactly (a truncated file fails);
* `.pt` / `.pth` / `.bin` in a checkpoint (`torch.save`'s zip archives): the archive's directory
  reads and every member matches its CRC, which catches truncation and changed bytes (torch.load
  checks neither: a flipped byte loads as a wrong number);
* `.json`: parses (`trainer_state.json` must also say how far the run got).

A safetensors file carries no checksum, so bytes changed inside a tensor go unnoticed. Reading
every torch archive once costs about a second per GB, small next to the run it resumes.
"""

from __future__ import annotations

from pathlib import Path

from llavakit.errors import CheckpointError
from llavakit.model.checkpoint import (
    check_checkpoint_folder,
    check_safetensors_file,
    check_torch_file,
    read_json_file,
)

TRAINER_STATE_NAME = "trainer_state.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def verify_file(path: Path) -> None:
    """Check `path` by its kind (see the module docstring); files of other kinds pass."""
    if path.suffix == ".safetensors":
        check_safetensors_file(path)
    elif path.suffix in TORCH_SUFFIXES:
        check_torch_file(path, checksums=True)
    elif path.suffix == ".json":
        read_json_file(path)


def verify_resume_checkpoint(folder: Path) -> None:
    """A `checkpoint-N` folder that a resume can continue from: its state and every file intact."""
    if not folder.is_dir():
        raise CheckpointError(f"output.resume: checkpoint folder {folder} does not exist")
    state_file = folder / TRAINER_STATE_NAME
    if not state_file.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: {TRAINER_STATE_NAME} is missing")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        verify_file(path)
    state = read_json_file(state_file)
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
    "verify_model_folder",
    "verify_resume_checkpoint",
]
