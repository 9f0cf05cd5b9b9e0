"""Streaming tar shards or parquet files across ranks and dataloader workers: each sample once per epoch, resumable.

For corpora larger than memory or disk cache, no process should hold the whole index. Here the
unit of work is a file, a tar shard or a parquet file (an `hf` dataset's local folder, read with
pyarrow a batch of rows at a time): each epoch the files are put in a seeded order and dealt to the
`world_size x num_workers` consumers (consumer `rank * num_workers + worker`), so every sample
is read by exactly one consumer and no process indexes more than its own shards (one at a
time, headers only). A consumer streams its shards' samples through a seeded shuffle buffer
(seed, epoch, consumer), so the order is the same on every run.

Resuming: PyTorch's DataLoader takes the batches of a rank's workers in turn (batch `k` from
worker `k % num_workers`, `batch_size` consecutive samples of that worker), so the batches a
rank has seen tell how many samples each of its workers yielded; `resume(batches_seen,
batch_size)` makes every worker skip exactly those (without decoding them) and renumbers the
workers so the loader's turn order continues too: the resumed run sees the same remaining
batches, in the same order, as an uninterrupted one. Bad samples come back as
`{"skipped": reason, "sample_id": id}`, counted and reported by the collators like the
map-style dataset's. Give every rank the same number of samples (shards of equal size, their
count a multiple of the consumers), as distributed training needs equal batch counts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from llavakit.data.formats import encode_dataset_sample
from llavakit.data.hf_source import iter_parquet_records, parquet_files
from llavakit.data.records import BadSampleError, DatasetSpec, sample_id_of
from llavakit.data.shards import index_shard, shard_files, shard_record
from llavakit.data.sources import source_of
from llavakit.errors import ConfigError
from llavakit.processing.processor import LlavaKitProcessor

Unit = tuple[int, Path]  # (dataset index, shard)


def epoch_units(specs: Sequence[DatasetSpec], seed: int, epoch: int) -> list[Unit]:
    """Every shard of every dataset, in the epoch's seeded order (the same in every process)."""
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
    order = np.random.default_rng([seed, epoch]).permutation(len(units))
    return [units[i] for i in order]


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
    """Tar-shard datasets streamed by `world_size` ranks x the DataLoader's workers (see the module docstring)."""

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
        epoch_units(self.specs, seed, 0)  # the sources are shards: fail now, not in a worker

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration streams (no resume point carries over)."""
        self.epoch, self._resume = epoch, None

    def resume(self, batches_seen: int, batch_size: int) -> None:
        """Continue the current epoch after `batches_seen` batches of `batch_size` taken by this rank."""
        self._resume = (batches_seen, batch_size)

    def _consumer(self) -> tuple[int, int, int]:
        """(this consumer's index, the consumer count, this worker's skip on resume)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip = 0
        if self._resume is not None:
            # The resumed loader asks worker 0 first, where the interrupted one would ask worker
            # `batches % workers`: worker w takes over that one's stream, so batches come in the same order.
            batches, batch_size = self._resume
            worker = (worker + batches) % workers
            skip = batch_size * len(range(worker, batches, workers))
        return self.rank * workers + worker, self.world_size * workers, skip

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """This consumer's (dataset index, record) stream for the epoch, shuffled, resume skip applied."""
        consumer, consumers, skip = self._consumer()
        units = epoch_units(self.specs, self.seed, self.epoch)[consumer::consumers]
        rng = random.Random(f"llavakit-stream:{self.seed}:{self.epoch}:{consumer}")
        stream = shuffled(self._unit_records(units), self.shuffle_buffer, rng)
        for position, item in enumerate(stream):
            if position >= skip:
                yield item

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
