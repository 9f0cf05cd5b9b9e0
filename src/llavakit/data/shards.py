"""Tar shards in the webdataset layout, read with random access through an index of member offsets.

A shard is an uncompressed `.tar` whose members are grouped by key (the member name up to the
first dot of its file name): `key.json` holds the LLaVA record, `key.jpg` / `key.png` (or
`key.0.jpg`, `key.1.png`, ... for several images, in that order) its images. A dataset is one
shard or a folder of `*.tar` shards, read in name order.

The index is built once by walking the tar headers (no image is read) and keeps, per image, the
shard and the byte range of its member, so drawing sample `i` reads exactly its bytes
(`ShardImages`). The record's `image` names, when it has them, are kept (a converted LLaVA
dataset keeps its file names); a record without them is given its members' names. A key with
no `.json`, or a `.json` that does not parse, becomes a load-error marker: a counted bad sample.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavakit.data.records import EMBEDDED_IMAGES_KEY, LOAD_ERROR_KEY, DatasetSpec
from llavakit.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Member:
    """Where one member's bytes lie: its shard, offset and size."""

    shard: str
    offset: int
    size: int
    name: str

    def read(self) -> bytes:
        with open(self.shard, "rb") as file:
            file.seek(self.offset)
            return file.read(self.size)


@dataclass(frozen=True)
class ShardImages:
    """A sample's images as byte ranges in its shard (`EMBEDDED_IMAGES_KEY`); read on demand."""

    members: dict[int, Member]  # by image position: `key.N.ext` is image N, `key.ext` image 0

    def image_bytes(self, position: int) -> bytes | None:
        member = self.members.get(position)
        return member.read() if member is not None else None


def shard_files(path: str | Path) -> list[Path]:
    """The dataset's shards: the `.tar` file itself, or a folder's `*.tar` files in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    shards = sorted(path.glob("*.tar")) if path.is_dir() else []
    if not shards:
        raise DataError(f"shard dataset {path} is neither a .tar file nor a folder holding .tar shards")
    return shards


def split_key(name: str) -> tuple[str, str]:
    """`dir/key.0.jpg` -> (`dir/key`, `0.jpg`): webdataset keys end at the file name's first dot."""
    folder, _, base = name.rpartition("/")
    key, _, suffix = base.partition(".")
    return (f"{folder}/{key}" if folder else key), suffix


def image_position(suffix: str) -> int | None:
    """`jpg` -> 0, `3.png` -> 3; None for a member that is not an image."""
    if Path("x." + suffix).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    head = suffix.split(".")[0]
    return int(head) if head.isdigit() and suffix.count(".") == 1 else 0


def index_shard(shard: Path) -> dict[str, dict[str, Member]]:
    """Per key, its members by suffix, in shard order; only headers are read."""
    groups: dict[str, dict[str, Member]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, suffix = split_key(info.name)
                groups.setdefault(key, {})[suffix] = Member(str(shard), info.offset_data, info.size, info.name)
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"shard {shard} is not a readable uncompressed tar file: {error}") from None
    return groups


def shard_record(key: str, members: dict[str, Member], shard: Path) -> dict[str, Any]:
    """The key's record with its images attached, or a load-error marker naming the shard and key."""
    where = f"key {key!r} of shard {shard}"
    images = {image_position(s): m for s, m in members.items() if image_position(s) is not None}
    if "json" not in members:
        return {"id": key, LOAD_ERROR_KEY: f"malformed record: {where} has no .json member"}
    try:
        record = json.loads(members["json"].read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        return {"id": key, LOAD_ERROR_KEY: f"malformed JSON: {where}: {error}"}
    if not isinstance(record, dict):
        return {"id": key, LOAD_ERROR_KEY: f"malformed record: {where} holds a JSON {type(record).__name__}"}
    record.setdefault("id", key)
    if images and not record.get("image"):
        names = [Path(images[position].name).name for position in sorted(images)]
        record["image"] = names if len(names) > 1 else names[0]
    if images:
        record[EMBEDDED_IMAGES_KEY] = ShardImages(images)
    return record


def load_shard_records(spec: DatasetSpec) -> list[dict[str, Any]]:
    """Every sample of the shards, in shard and member order, its images indexed by offset."""
    records = []
    for shard in shard_files(spec.path):
        records += [shard_record(key, members, shard) for key, members in index_shard(shard).items()]
    if not records:
        raise DataError(f"shard dataset {spec.path} holds no samples")
    return records
