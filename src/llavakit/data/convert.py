"""`llavakit data convert`: a dataset from one source format to another (LLaVA JSON + folder, parquet, tar shards).

Records are read by the source readers training uses (`llavakit.data.sources`), so whatever
training would read is what gets written, and written so it reads back the same: the records
(their `image` names included) and every image's bytes, unchanged (never re-encoded).

* `llava`: `OUT/data.json` and the images under `OUT/images/<name>`;
* `parquet`: `OUT/data-NNNNN.parquet` with columns `id`, `conversations` (JSON text),
  `image` (a list of HF `Image` values, `{bytes, path}`) and `llava_extra` (the JSON of the
  record's other fields), read back by the `hf` source;
* `shards`: `OUT/shard-NNNNN.tar` in the webdataset layout (`key.json`, `key.png` or
  `key.0.png`, `key.1.jpg`, ...), read back by the `shards` source.

A record that could not be read (a load-error marker) is not written: it is counted and named
in the summary. A missing image file is written without bytes (its name stays in the record),
so the converted dataset reports it as training would: a `missing image` bad sample.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePath
from typing import Any

from tqdm.auto import tqdm

from llavakit.data.records import EMBEDDED_IMAGES_KEY, LOAD_ERROR_KEY, DatasetSpec
from llavakit.data.sources import load_source_records

TARGETS = ("llava", "parquet", "shards")
EXTRA_COLUMN = "llava_extra"


@dataclass
class ConvertSummary:
    """What a conversion wrote and what it could not: records, images, skipped records and missing images."""

    records: int = 0
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"wrote {self.records} record(s) and {self.images} image(s) to {len(self.files)} file(s)"]
        lines += [f"  not converted: {sample_id}: {reason}" for sample_id, reason in self.skipped]
        lines += [f"  missing image (name kept, no bytes): {name}" for name in self.missing_images]
        return lines


@dataclass
class Converted:
    """One record ready to write: the record without private keys, and its images as (name, bytes or None)."""

    record: dict[str, Any]
    images: list[tuple[str, bytes | None]]


def image_names(record: dict[str, Any]) -> list[str]:
    value = record.get("image")
    return [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] if value else []


def _image_bytes(record: dict[str, Any], spec: DatasetSpec, position: int, name: str) -> bytes | None:
    embedded = record.get(EMBEDDED_IMAGES_KEY)
    data = embedded.image_bytes(position) if embedded is not None else None
    if data is not None:
        return data
    path = Path(spec.images_root) / name
    return path.read_bytes() if path.is_file() else None


def read_converted(spec: DatasetSpec, summary: ConvertSummary) -> Iterator[Converted]:
    """The dataset's records with their image bytes, load-error markers counted in `summary` instead."""
    for index, record in enumerate(tqdm(load_source_records(spec), desc=f"convert {spec.name}", unit="record")):
        if LOAD_ERROR_KEY in record:
            summary.skipped.append((str(record.get("id", index)), str(record[LOAD_ERROR_KEY])))
            continue
        images = []
        for position, name in enumerate(image_names(record)):
            data = _image_bytes(record, spec, position, name)
            if data is None:
                summary.missing_images.append(name)
            images.append((name, data))
        clean = {key: value for key, value in record.items() if key != EMBEDDED_IMAGES_KEY}
        summary.records += 1
        summary.images += sum(data is not None for _, data in images)
        yield Converted(clean, images)


def write_llava(items: Iterator[Converted], out: Path, summary: ConvertSummary) -> None:
    """`out/data.json` and the images under `out/images/` by their names (kept inside that folder)."""
    records = []
    for item in items:
        for name, data in item.images:
            if data is None:
                continue
            target = out / "images" / _safe_name(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        records.append(item.record)
    path = out / "data.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    summary.files.append(path)


def _safe_name(name: str) -> str:
    """A name that stays inside the image folder: absolute paths and `..` parts keep their file name only."""
    pure = PurePath(name)
    return pure.name if pure.is_absolute() or ".." in pure.parts else name


def write_parquet(items: Iterator[Converted], out: Path, summary: ConvertSummary, rows_per_file: int) -> None:
    """Parquet files of `rows_per_file` rows, in the layout the `hf` source reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("conversations", pa.string()),
            ("image", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
            (EXTRA_COLUMN, pa.string()),
        ]
    )
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        path = out / f"data-{len(summary.files):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        summary.files.append(path)
        rows.clear()

    for item in items:
        record = dict(item.record)
        # an id that is not a string (a number) goes in the extra JSON too, so it reads back as it was
        kept = ("id", "conversations") if isinstance(record.get("id"), str) else ("conversations",)
        extra = {key: value for key, value in record.items() if key not in kept}
        rows.append(
            {
                "id": None if record.get("id") is None else str(record["id"]),
                "conversations": json.dumps(record.get("conversations"), ensure_ascii=False),
                "image": [{"bytes": data, "path": name} for name, data in item.images],
                EXTRA_COLUMN: json.dumps(extra, ensure_ascii=False),
            }
        )
        if len(rows) == rows_per_file:
            flush()
    if rows or not summary.files:
        flush()


def write_shards(items: Iterator[Converted], out: Path, summary: ConvertSummary, per_shard: int) -> None:
    """Uncompressed tar shards of `per_shard` samples: `key.json` and the images as `key.<ext>` / `key.<n>.<ext>`."""
    index = 0
    while chunk := list(islice(items, per_shard)):
        path = out / f"shard-{len(summary.files):05d}.tar"
        summary.files.append(path)
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for item in chunk:
                _add_sample(tar, f"{index:09d}", item)
                index += 1


def _add_sample(tar: tarfile.TarFile, key: str, item: Converted) -> None:
    _add_member(tar, f"{key}.json", json.dumps(item.record, ensure_ascii=False).encode("utf-8"))
    several = len(item.images) > 1
    for position, (name, data) in enumerate(item.images):
        if data is not None:
            suffix = (PurePath(name).suffix or ".png").lower()
            _add_member(tar, f"{key}.{position}{suffix}" if several else f"{key}{suffix}", data)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def convert_dataset(spec: DatasetSpec, out: str | Path, target: str, per_file: int = 1000) -> ConvertSummary:
    """Write the dataset `spec` to the (prepared, empty) folder `out` as `target`; returns what was written."""
    if target not in TARGETS:
        raise ValueError(f"format must be one of {', '.join(TARGETS)}, got {target!r}")
    out = Path(out)
    summary = ConvertSummary()
    items = read_converted(spec, summary)
    if target == "llava":
        write_llava(items, out, summary)
    elif target == "parquet":
        write_parquet(items, out, summary, per_file)
    else:
        write_shards(items, out, summary, per_file)
    return summary
