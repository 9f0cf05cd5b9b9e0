"""A compact, shareable index of a dataset's records: UTF-8 JSON in one byte buffer, parsed on access.

Why: LLaVA-1.5's 665K-record mixture parsed by `json.load` is millions of Python objects,
gigabytes per process, and every dataloader worker ends up with its own copy (reference counts
write to every object, so fork's copy-on-write pages get copied as soon as a worker touches
them). Here each record is kept as its JSON bytes in one numpy buffer with an offsets array:
two objects whatever the record count, about the size of the file, and never written after
they are built, so forked workers share their pages. A record is parsed when it is drawn
(microseconds, next to decoding its image). `benchmarks/data_index_memory.py` measures it.

Sample ids, which reports and the mixture need for every record, are kept the same way
(`CompactStrings`).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np


class CompactStrings(Sequence[str]):
    """Strings as UTF-8 in one buffer with offsets (immutable; shared by forked workers)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self._data, self._offsets = data, offsets

    @classmethod
    def build(cls, chunks: Iterable[bytes]) -> CompactStrings:
        """From encoded items, each copied once into a growing buffer (no list of them is kept)."""
        data, offsets = bytearray(), array("q", [0])
        for chunk in chunks:
            data += chunk
            offsets.append(len(data))
        return cls(np.frombuffer(data, dtype=np.uint8), np.frombuffer(offsets, dtype=np.int64).copy())

    @classmethod
    def of(cls, strings: Iterable[str]) -> CompactStrings:
        return cls.build(text.encode("utf-8", "surrogatepass") for text in strings)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def raw(self, index: int) -> bytes:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        return self._data[self._offsets[index] : self._offsets[index + 1]].tobytes()

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.raw(index).decode("utf-8", "surrogatepass")

    @property
    def nbytes(self) -> int:
        return self._data.nbytes + self._offsets.nbytes


def _encode(record: Any) -> bytes:
    """A record as compact JSON; text with lone surrogates (kept for validation to report) escaped."""
    try:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record, separators=(",", ":")).encode("ascii")


class CompactRecords(Sequence[dict[str, Any]]):
    """JSON records in one buffer; `records[i]` parses record `i` (a fresh dict each time)."""

    def __init__(self, encoded: CompactStrings):
        self._encoded = encoded

    @classmethod
    def build(cls, records: Iterable[Any]) -> CompactRecords:
        return cls(CompactStrings.build(_encode(record) for record in records))

    def __len__(self) -> int:
        return len(self._encoded)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return json.loads(self._encoded.raw(index))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return self._encoded.nbytes


@dataclass(frozen=True)
class MixtureEntry:
    """One record of a mixture: which dataset it came from and its sample id."""

    spec_index: int
    sample_id: str
    record: Any


class MixtureEntries(Sequence[MixtureEntry]):
    """The kept records of every dataset of a mixture, in dataset and file order, as a few arrays.

    Entry `i` is record `positions[i]` of dataset `datasets[i]`'s records, named `ids[i]`; the
    records stay in their source's own storage (a `CompactRecords`, or a source's list), so
    nothing here grows with the records' size, and nothing is written after it is built.
    """

    def __init__(self) -> None:
        self._sources: list[Sequence[Any]] = []
        self._datasets = np.zeros(0, dtype=np.int32)
        self._positions = np.zeros(0, dtype=np.int64)
        self._ids = CompactStrings.of([])

    def add(self, records: Sequence[Any], positions: Sequence[int], ids: CompactStrings) -> None:
        """The next dataset: its records, the positions kept and every record's sample id."""
        kept = np.asarray(positions, dtype=np.int64)
        self._datasets = np.concatenate([self._datasets, np.full(len(kept), len(self._sources), dtype=np.int32)])
        self._positions = np.concatenate([self._positions, kept])
        self._ids = CompactStrings.build(
            [*(self._ids.raw(i) for i in range(len(self._ids))), *(ids.raw(int(p)) for p in kept)]
        )
        self._sources.append(records)

    def __len__(self) -> int:
        return len(self._positions)

    def spec_index(self, index: int) -> int:
        return int(self._datasets[index])

    def sample_id(self, index: int) -> str:
        return self._ids[index]

    def pool_sizes(self, datasets: int) -> list[int]:
        return np.bincount(self._datasets, minlength=datasets).tolist()

    @overload
    def __getitem__(self, index: int) -> MixtureEntry: ...
    @overload
    def __getitem__(self, index: slice) -> list[MixtureEntry]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        spec = int(self._datasets[index])
        return MixtureEntry(spec, self._ids[index], self._sources[spec][int(self._positions[index])])

    def __iter__(self) -> Iterator[MixtureEntry]:
        return (self[i] for i in range(len(self)))
