"""Reading benchmark files as published: JSON, JSON lines, tab-separated values, folders of them.

Every error names the file (and the line or record), so a file in the wrong format is one line
that says what was expected, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llavakit.errors import DataError


def read_text(path: Path, what: str) -> str:
    """The file's UTF-8 text; a missing or undecodable file raises naming it."""
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{what} {path}: not UTF-8 text ({error.reason} at byte {error.start})") from error


def read_json(path: Path, what: str) -> Any:
    """A JSON file's value."""
    try:
        return json.loads(read_text(path, what))
    except (json.JSONDecodeError, RecursionError) as error:
        raise DataError(f"{what} {path}: not valid JSON ({error})") from error


def read_json_lines(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    records = []
    for number, line in enumerate(read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            raise DataError(f"{what} {path} line {number}: not valid JSON ({error})") from error
        if not isinstance(record, dict):
            raise DataError(f"{what} {path} line {number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return records


def require(record: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    """Each key is in `record`; the first missing one raises naming `where`."""
    for key in keys:
        if key not in record:
            raise DataError(f"{where} has no {key!r}")


def expect(value: Any, kind: type | tuple[type, ...], where: str, wanted: str) -> Any:
    """`value` when it is a `kind` (a bool is not an int here), else a DataError saying what was wanted."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise DataError(f"{where}: expected {wanted}, got {type(value).__name__} {_short(value)}")
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- tab-separated values -------------------------------------------------------------------


def _quoted_field(text: str, start: int, path: Path, row: int) -> tuple[str, int]:
    """The value of the quoted field opening at `start` ("" inside stands for one quote) and where it ends."""
    parts, position = [], start + 1
    while True:
        close = text.find('"', position)
        if close < 0:
            raise DataError(f"TSV file {path} row {row}: a quoted field never closes")
        parts.append(text[position:close])
        if text.startswith('"', close + 1):
            parts.append('"')
            position = close + 2
            continue
        return "".join(parts), close + 1


def read_tsv(path: Path, what: str) -> list[dict[str, str]]:
    """The rows of a tab-separated file with a header row, as dicts by column name.

    Fields may be quoted with '"' (as pandas writes them), holding tabs and newlines. The scan
    jumps between delimiters, so files with large base64 fields read quickly.
    """
    text = read_text(path, what).replace("\r\n", "\n")
    rows: list[list[str]] = []
    position, length = 0, len(text)
    while position < length:
        row: list[str] = []
        while True:
            if text.startswith('"', position):
                value, position = _quoted_field(text, position, path, len(rows) + 1)
            else:
                end = min(_find(text, "\t", position), _find(text, "\n", position))
                value, position = text[position:end], end
            row.append(value)
            if position >= length or text[position] == "\n":
                position += 1
                break
            if text[position] != "\t":
                raise DataError(f"{what} {path} row {len(rows) + 1}: text after a closing quote")
            position += 1
        if any(cell.strip() for cell in row):
            rows.append(row)
    if not rows:
        raise DataError(f"{what} {path} is empty; expected a header row and one row per question")
    header = rows[0]
    records = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{what} {path} row {number}: {len(row)} fields for {len(header)} columns")
        records.append(dict(zip(header, row)))
    return records


def _find(text: str, char: str, start: int) -> int:
    found = text.find(char, start)
    return len(text) if found < 0 else found


# ---- folders and default image folders ---------------------------------------------------------


def single_path(paths: Sequence[Path], task: str, wanted: str) -> Path:
    """The one path a benchmark takes."""
    if len(paths) != 1:
        raise DataError(f"{task}: --data takes one path ({wanted}), got {len(paths)}")
    return paths[0]


def file_in(folder: Path, name: str, task: str) -> Path:
    """`folder/name`, which must exist."""
    path = folder / name
    if not path.is_file():
        raise DataError(f"{task}: {folder} has no {name}")
    return path


def image_folder(given: Path | None, base: Path, candidates: Sequence[str]) -> Path:
    """The image folder: `given`, else the first of `base/candidate` that exists, else `base`."""
    if given is not None:
        if not given.is_dir():
            raise DataError(f"--image-folder {given} is not a folder")
        return given
    for candidate in candidates:
        if (base / candidate).is_dir():
            return base / candidate
    return base
