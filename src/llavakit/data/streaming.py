"""Streaming tar shards or parquet files across ranks and dataloader workers: each sample once per epoch, resumable.

For corpora larger than memory or disk cache, no process should hold the whole index. Here the
unit of work is a file, a tar shard or a parquet file (an `hf` dataset's local folder, read with
pyarrow a batch of rows at a time). The files are dealt once to the `world_size x num_workers`
consumers (consumer `rank * num_workers + worker`), largest first to the consumer with the
fewest samples so far, so every sample belongs to exactly one consumer and no process indexes
more than its own files (one at a time, headers only; the sample count of each file is read once,
from tar headers or parquet metadata). Each epoch a consumer reads its files in a seeded order
and streams their samples through a seeded shuffle buffer (seed, epoch, consumer), so the order
is the same on every run and changes from epoch to epoch.

Distributed training needs the same batch count on every rank, so every consumer streams as
many samples as the smallest one holds: with files of equal size, their number a multiple of
the consumers, that is every sample; otherwise the surplus is left out of each epoch (a
different random part each epoch), and `configure` logs how many.

Resuming: PyTorch's DataLoader takes the batches of a rank's workers in turn (batch `k` from
worker `k % num_workers`, `batch_size` consecutive samples of that worker), so the batches a
rank has seen tell how many samples each of its workers yielded; `resume(batches_seen,
batch_size)` makes every worker skip exactly those (without decoding them) and renumbers the
workers so the loader's turn order continues too: the resumed run sees the same remaining
batches, in the same order, as an uninterrupted one. Bad samples come back as
`{"skipped": reason, "sample_id": id}`, counted and reported by the collators like the
map-style dataset's.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from llavakit.data.formats import encode_dataset_sample
from llavakit.data.hf_source import iter_parquet_records, parquet_files, parquet_rows
from llavakit.data.records import BadSampleError, DatasetSpec, sample_id_of
from llavakit.data.shards import index_shard, shard_files, shard_record
from llavakit.data.sources import source_of
from llavakit.errors import ConfigError
from llavakit.processing.processor import LlavaKitProcessor

logger = logging.getLogger(__name__)

Unit = tuple[int, Path]  # (dataset index, shard)


def stream_units(specs: Sequence[DatasetSpec]) -> list[Unit]:
    """Every shard or parquet file of every dataset, in dataset then name order."""
    units: list[Unit] = []
    for index, spec in enumerate(specs):
        source = source_of(spec)
        if source not in ("shards", "hf"):
            raise ConfigError(
                f"dataset {spec.path}: streaming reads tar shards or parquet files; convert it with "
                "`llavakit data convert SRC OUT --format shards`"
            )
        files = shard_files(spec.path) if source == "shards" else parquet_files(spec.path)
        units += [(index, file) for file in files]
    return units


def unit_size(unit: Unit) -> int:
    """Samples in one file, from tar headers or parquet metadata (nothing decoded)."""
    _, file = unit
    return parquet_rows(file) if file.suffix == ".parquet" else len(index_shard(file))


def deal(sizes: Sequence[int], consumers: int, seed: int) -> list[list[int]]:
    """Unit indices per consumer: largest first (ties in a seeded order) to the least loaded consumer."""
    tiebreak = np.random.default_rng([seed]).permutation(len(sizes))
    dealt: list[list[int]] = [[] for _ in range(consumers)]
    loads = [0] * consumers
    for unit in sorted(range(len(sizes)), key=lambda u: (-sizes[u], tiebreak[u])):
        lightest = min(range(consumers), key=lambda c: (loads[c], c))
        dealt[lightest].append(unit)
        loads[lightest] += sizes[unit]
    return dealt


def shuffled(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """`items` through a shuffle buffer of `size` (1: in order); the same rng state gives the same order."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        position = rng.randrange(size)
        yield buffer[position]
        buffer[position] = item
    rng.shuffle(buffer)
    yield from buffer


class StreamingShardDataset(IterableDataset):
    """Shards and parquet files streamed by `world_size` ranks x the DataLoader's workers (module docstring)."""

    def __init__(
        self,
        specs: Sequence[DatasetSpec],
        processor: LlavaKitProcessor | None,
        max_length: int | None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
    ):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, {world_size}), got {rank}")
        if shuffle_buffer < 1:
            raise ConfigError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
        self.specs, self.processor, self.max_length = list(specs), processor, max_length
        self.seed, self.rank, self.world_size, self.shuffle_buffer = seed, rank, world_size, shuffle_buffer
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        self.units = stream_units(self.specs)  # the sources are shards: fail now, not in a worker
        self.unit_sizes = [unit_size(unit) for unit in self.units]
        self.num_workers: int | None = None
        self.batch_size: int | None = None
        self._batches: int | None = None

    def configure(self, num_workers: int, batch_size: int) -> int:
        """Fix the DataLoader's worker count and batch size; returns this rank's batches per epoch.

        With them the dataset has a length (`len`: the rank's batches x `batch_size`, so a
        DataLoader's `len` is exact), which the Trainer needs to count steps and epochs.
        """
        self.num_workers, self.batch_size = max(num_workers, 1), batch_size
        loads = self.consumer_loads(self.num_workers)
        quota = min(loads)
        left_out = sum(loads) - quota * len(loads)
        if quota == 0:
            raise ConfigError(
                f"streaming: {len(self.units)} file(s) for {len(loads)} consumers ({self.world_size} rank(s) x "
                f"{self.num_workers} worker(s)): some consumer gets no sample; split the data into more files "
                "(`llavakit data convert --per-file N`) or use fewer workers"
            )
        if left_out:
            logger.warning(
                "streaming: consumers hold %d to %d samples; %d sample(s) beyond the smallest count are left out "
                "of each epoch (files of equal size, their number a multiple of %d, avoid it)",
                quota,
                max(loads),
                left_out,
                len(loads),
            )
        self._batches = self.num_workers * math.ceil(quota / batch_size)
        return self._batches

    def consumer_loads(self, num_workers: int) -> list[int]:
        """Samples held by each consumer when `num_workers` workers per rank stream."""
        return self._dealt(num_workers)[1]

    def _dealt(self, num_workers: int) -> tuple[list[list[int]], list[int]]:
        """Unit indices per consumer, and the samples each holds."""
        dealt = deal(self.unit_sizes, self.world_size * num_workers, self.seed)
        return dealt, [sum(self.unit_sizes[unit] for unit in units) for units in dealt]

    def __len__(self) -> int:
        if self._batches is None or self.batch_size is None:
            raise TypeError("a stream's length is known once configure(num_workers, batch_size) has fixed its layout")
        return self._batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration streams (no resume point carries over)."""
        self.epoch, self._resume = epoch, None

    def resume(self, batches_seen: int, batch_size: int) -> None:
        """Continue the current epoch after `batches_seen` batches of `batch_size` taken by this rank."""
        self._resume = (batches_seen, batch_size)

    def _consumer(self) -> tuple[int, int, int]:
        """(this worker's index, the worker count, its skip on resume)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip = 0
        if self._resume is not None:
            # The resumed loader asks worker 0 first, where the interrupted one would ask worker
            # `batches % workers`: worker w takes over that one's stream, so batches come in the same order.
            batches, batch_size = self._resume
            worker = (worker + batches) % workers
            skip = batch_size * len(range(worker, batches, workers))
        return worker, workers, skip

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """This consumer's (dataset index, record) stream: the epoch's order, shuffled, cut to the quota, resumed."""
        worker, workers, skip = self._consumer()
        consumer = self.rank * workers + worker
        dealt, loads = self._dealt(workers)
        quota = min(loads)
        mine = dealt[consumer]
        order = np.random.default_rng([self.seed, self.epoch, consumer]).permutation(len(mine))
        units = [self.units[mine[i]] for i in order]
        rng = random.Random(f"llavakit-stream:{self.seed}:{self.epoch}:{consumer}")
        stream = shuffled(self._unit_records(units), self.shuffle_buffer, rng)
        yield from itertools.islice(stream, skip, quota)

    def _unit_records(self, units: list[Unit]) -> Iterator[tuple[int, dict[str, Any]]]:
        for index, file in units:  # one file read at a time, when it is reached
            if file.suffix == ".parquet":
                yield from ((index, record) for record in iter_parquet_records(self.specs[index], file))
                continue
            for key, members in index_shard(file).items():
                yield index, shard_record(key, members, file)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index, record in self.records():
            spec = self.specs[index]
            sample_id = sample_id_of(record, f"{spec.name}#?")
            try:
                encoded = encode_dataset_sample(record, spec, self.processor, self.max_length)
            except BadSampleError as error:
                yield {"skipped": error.reason, "sample_id": sample_id}
                continue
            yield {**encoded.features, "sample_id": sample_id}
