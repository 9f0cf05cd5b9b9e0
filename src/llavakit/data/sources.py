"""Where a dataset's records come from: LLaVA JSON/JSONL, a Hugging Face dataset, or tar shards.

Every source yields the same thing, LLaVA-format records (`llavakit.data.records`), so
validation, bad-sample reports, weights, formats and encoding never depend on the source. A
source that carries its images (parquet bytes, tar members) puts an object under
`EMBEDDED_IMAGES_KEY` in each record that reads them on demand: the index holds offsets and
row numbers, never pixels.

`DatasetSpec.source` names the source; left null it follows the path:

* a `.json` / `.jsonl` file -> `llava`;
* a `.tar` file, or a folder holding `.tar` files -> `shards` (`llavakit.data.shards`);
* a `.parquet` / `.arrow` file, a folder holding them, or a folder written by
  `datasets.save_to_disk` -> `hf` (`llavakit.data.hf_source`);
* a name without a suffix that is not on disk -> `hf` (a hub name, read when online);
* any other file -> `llava` (whose reader says what is wrong with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llavakit.data.index import CompactRecords
from llavakit.data.records import DatasetSpec, iter_records
from llavakit.errors import DataError

_HF_SUFFIXES = (".parquet", ".arrow")


def source_of(spec: DatasetSpec) -> str:
    """The spec's declared source, else the one its path shows (see the module docstring)."""
    if spec.source is not None:
        return spec.source
    path = Path(spec.path)
    if path.suffix in (".json", ".jsonl"):
        return "llava"
    if path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar"))):
        return "shards"
    if path.suffix in _HF_SUFFIXES or path.is_dir() or not (path.exists() or path.suffix):
        return "hf"
    return "llava"  # whose reader names what is wrong with any other file


def load_source_records(spec: DatasetSpec) -> Sequence[dict[str, Any]]:
    """All records of the dataset `spec`, in source order, whatever the source.

    LLaVA JSON/JSONL is kept compact (`CompactRecords`: JSON bytes in one buffer, parsed on
    access); the others' records hold live readers of their embedded images and stay a list.
    """
    source = source_of(spec)
    if spec.columns and source != "hf":
        raise DataError(f"dataset {spec.path}: columns apply to source hf only, this dataset's source is {source}")
    if source == "llava":
        records = CompactRecords.build(iter_records(spec))
        if not records:
            raise DataError(f"dataset file {spec.path} holds no records")
        return records
    if source == "shards":
        from llavakit.data.shards import load_shard_records

        return load_shard_records(spec)
    from llavakit.data.hf_source import load_hf_records

    return load_hf_records(spec)
