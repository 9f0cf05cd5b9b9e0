"""Hugging Face datasets as a source: parquet / arrow files on disk, a `save_to_disk` folder, or a hub name.

The data users train on today is often published this way (LLaVA-OneVision's data, the_cauldron):
a table with a conversation column and an image column whose cells are HF `Image` values
(`{"bytes": ..., "path": ...}`), lists of them, or plain paths. `DatasetSpec.columns` maps the
LLaVA fields to the table's columns (`{conversations: messages, image: images, id: sample_id}`);
unmapped fields use their own names, and `image` falls back to an `images` column.

The table stays memory-mapped by `datasets` (arrow files in its cache); each record keeps the
text fields and the image names, and an `HFImages` that reads the row's image bytes when the
sample is drawn. A conversation cell may be a list of turns or the JSON text of one. Columns
other than the mapped ones are kept in the record; a string column `llava_extra` (what
`llavakit data convert` writes) holds the JSON of the record's remaining fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from llavakit.data.records import EMBEDDED_IMAGES_KEY, DatasetSpec
from llavakit.errors import DataError

EXTRA_COLUMN = "llava_extra"
_FIELDS = ("id", "conversations", "image", "video")


def open_hf_dataset(path: str | Path) -> Any:
    """The dataset at `path` (one split): a `save_to_disk` folder, parquet / arrow files or a folder of them,
    else a hub name (train split)."""
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"dataset {path}: source hf needs the datasets package (pip install 'llavakit[hf]')") from error
    local = Path(path)
    if (local / "dataset_info.json").is_file() or (local / "state.json").is_file():
        return datasets.load_from_disk(str(local))
    for suffix, builder in ((".parquet", "parquet"), (".arrow", "arrow")):
        files = [local] if local.suffix == suffix else sorted(local.glob(f"*{suffix}")) if local.is_dir() else []
        if files:
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    if local.exists():
        raise DataError(f"dataset {path}: no .parquet or .arrow files and no save_to_disk folder there")
    return datasets.load_dataset(str(path), split="train")


@dataclass
class HFImages:
    """A row's images in the table (`EMBEDDED_IMAGES_KEY`): their bytes are read when the sample is drawn."""

    table: Any
    column: str
    row: int

    def image_bytes(self, position: int) -> bytes | None:
        cells = _cells(self.table.column(self.column)[self.row].as_py())
        cell = cells[position] if position < len(cells) else None
        return cell.get("bytes") if isinstance(cell, dict) else None


def _cells(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _image_name(cell: Any, sample: str, position: int) -> str:
    """What the record calls the image: its path (the file's name when the bytes are embedded and the path
    is absolute), else a name made from the sample and position."""
    if isinstance(cell, str):
        return cell
    path = cell.get("path") if isinstance(cell, dict) else None
    if not path:
        return f"{sample}-{position}.png"
    pure = PurePath(path)
    embedded = isinstance(cell, dict) and cell.get("bytes") is not None
    return pure.name if embedded and (pure.is_absolute() or ".." in pure.parts) else path


def _columns(spec: DatasetSpec, names: list[str]) -> dict[str, str]:
    """LLaVA field -> column: the spec's mapping, then same-named columns, `images` for `image`."""
    mapping = dict(spec.columns or {})
    missing = [column for column in mapping.values() if column not in names]
    if missing:
        raise DataError(f"dataset {spec.path}: columns {missing} not in the dataset (it has {names})")
    for field in _FIELDS:
        if field not in mapping and field in names:
            mapping[field] = field
    if "image" not in mapping and "images" in names:
        mapping["image"] = "images"
    return mapping


def _turns(value: Any) -> Any:
    """A conversation cell: turns as dicts without the nulls a struct column adds, or parsed JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, list):
        return [{k: v for k, v in t.items() if v is not None} if isinstance(t, dict) else t for t in value]
    return value


def _record(row: dict[str, Any], mapping: dict[str, str], fallback_id: str) -> dict[str, Any]:
    by_column = {column: field for field, column in mapping.items()}
    record: dict[str, Any] = {}
    for column, value in row.items():
        if column == EXTRA_COLUMN:
            continue
        field = by_column.get(column, column)
        record[field] = _turns(value) if field == "conversations" else value
    if isinstance(row.get(EXTRA_COLUMN), str):
        record.update(json.loads(row[EXTRA_COLUMN]))
    if record.get("id") is None:
        record["id"] = fallback_id
    return record


def load_hf_records(spec: DatasetSpec) -> list[dict[str, Any]]:
    """Every row as a LLaVA record; image bytes stay in the table until drawn."""
    dataset = open_hf_dataset(spec.path)
    table = dataset.data  # the memory-mapped arrow table, without HF's image decoding
    mapping = _columns(spec, list(table.column_names))
    image_column = mapping.get("image")
    text_columns = [column for column in table.column_names if column != image_column]
    rows = table.select(text_columns).to_pylist()
    records = [_record(row, mapping, f"{spec.name}#{index}") for index, row in enumerate(rows)]
    if image_column is not None:
        for index, record in enumerate(records):
            _attach_images(record, table, image_column, index)
    if not records:
        raise DataError(f"dataset {spec.path} holds no records")
    return records


def _attach_images(record: dict[str, Any], table: Any, column: str, row: int) -> None:
    """The row's image names into `image` (unless the record names them), and its bytes reader."""
    cells = _cells(table.column(column)[row].as_py())
    if _name_images(record, cells):
        record[EMBEDDED_IMAGES_KEY] = HFImages(table, column, row)


def _name_images(record: dict[str, Any], cells: list[Any]) -> bool:
    """Put the cells' image names into `image` unless the record names them; whether any cell has bytes."""
    if not cells:
        return False
    names = [_image_name(cell, str(record["id"]), position) for position, cell in enumerate(cells)]
    if not record.get("image"):
        record["image"] = names[0] if len(names) == 1 else names
    return any(isinstance(cell, dict) and cell.get("bytes") is not None for cell in cells)


@dataclass(frozen=True)
class InlineImages:
    """A streamed row's image bytes, held with its record (`EMBEDDED_IMAGES_KEY`)."""

    data: tuple[bytes | None, ...]

    def image_bytes(self, position: int) -> bytes | None:
        return self.data[position] if position < len(self.data) else None


def parquet_files(path: str | Path) -> list[Path]:
    """A parquet file, or a folder's `*.parquet` files in name order (the units a stream deals out)."""
    path = Path(path)
    files = [path] if path.suffix == ".parquet" else sorted(path.glob("*.parquet")) if path.is_dir() else []
    if not files:
        raise DataError(f"dataset {path}: streaming an hf dataset needs a local .parquet file or a folder of them")
    return files


def parquet_rows(path: Path) -> int:
    """Rows in one parquet file, from its footer."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path} is not a readable parquet file: {error}") from None


def iter_parquet_records(spec: DatasetSpec, path: Path, batch_rows: int = 256) -> Iterator[dict[str, Any]]:
    """One parquet file's rows as records, a batch of rows at a time, each with its own image bytes."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    mapping = _columns(spec, list(parquet.schema_arrow.names))
    image_column = mapping.get("image")
    index = 0
    for batch in parquet.iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            cells = _cells(row.pop(image_column, None)) if image_column is not None else []
            record = _record(row, mapping, f"{path.name}#{index}")
            if _name_images(record, cells):
                data = tuple(cell.get("bytes") if isinstance(cell, dict) else None for cell in cells)
                record[EMBEDDED_IMAGES_KEY] = InlineImages(data)
            index += 1
            yield record
