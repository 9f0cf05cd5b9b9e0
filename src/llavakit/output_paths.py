"""Output folders checked before the work starts, and earlier work never overwritten unless asked.

Every command that writes a folder (train, import, export, data synth, eval) calls
`prepare_output_dir` first: a path under a regular file, or a file where a folder belongs,
fails at once instead of after hours of work; a folder that already holds files is refused
unless the user passes `--overwrite`, which empties it first, so an old run's files can never
mix with the new ones (a stale `model.safetensors.index.json` beside a new single file, an
old checkpoint kept by rotation).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from llavakit.errors import OutputExistsError, OutputPathError


def check_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """`path` as a folder that can be created or written: no file at it or above it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{what} {path} lies under {parent}, which is a file")
            break
    return path


def prepare_output_dir(path: str | Path, overwrite: bool = False, what: str = "output folder") -> Path:
    """Create `path` (checked); a non-empty folder is refused, or emptied when `overwrite` is true."""
    path = check_writable_dir(path, what)
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            count = sum(1 for _ in path.iterdir())
            raise OutputExistsError(
                f"{what} {path} already holds {count} entr{'y' if count == 1 else 'ies'} of earlier work; "
                "pass --overwrite to replace it, or choose another folder"
            )
        for entry in path.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """`path` as a file that can be written: not a folder, and no file above it."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder, not a file")
    check_writable_dir(path.parent, f"the folder of {what} {path}:")
    return path


# An input of a command, named for messages: ("the source", path), ("this run's input data.datasets.0.path", path).
NamedInput = tuple[str, str | Path]


def check_clear_of_inputs(output: str | Path, inputs: Iterable[NamedInput], what: str = "output folder") -> Path:
    """`output` (checked) neither is nor holds any of `inputs`: emptying it with --overwrite would delete them."""
    output = check_writable_dir(output, what)
    resolved = output.resolve()
    for name, path in inputs:
        held = Path(path).resolve()
        if resolved == held or resolved in held.parents:
            raise OutputPathError(f"{what} {output} holds {name} {path}; --overwrite would delete it")
    return output


def check_output_dir(output: str | Path, overwrite: bool, inputs: Iterable[NamedInput]) -> Path:
    """Before any work: a file in the way, earlier work without `overwrite`, or an input inside the folder."""
    output = check_clear_of_inputs(output, inputs)
    if not overwrite and output.is_dir() and any(output.iterdir()):
        prepare_output_dir(output, overwrite=False)  # raises OutputExistsError, naming the folder
    return output
