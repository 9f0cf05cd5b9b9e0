"""Run by tests/test_streaming_training.py under torchrun: this rank's stream, whole and resumed, as JSON.

python -m torch.distributed.run --nproc_per_node 2 tests/stream_ranks.py SHARDS OUT BATCH RESUME_AT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from llavakit.data.records import DatasetSpec
from llavakit.data.streaming import StreamingShardDataset


def batches(dataset: StreamingShardDataset, batch_size: int) -> list[list[str]]:
    def collate(items):
        return [item["sample_id"] for item in items]

    return list(DataLoader(dataset, batch_size=batch_size, num_workers=2, collate_fn=collate))


def main(shards: str, out: str, batch_size: int, resume_at: int) -> None:
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    def stream(epoch: int) -> StreamingShardDataset:
        dataset = StreamingShardDataset([DatasetSpec(shards)], None, None, seed=3, rank=rank, world_size=world_size)
        dataset.configure(num_workers=2, batch_size=batch_size)
        dataset.set_epoch(epoch)
        return dataset

    resumed = stream(1)
    resumed.resume(resume_at, batch_size)
    report = {
        "length": len(stream(0)) // batch_size,
        "epochs": [batches(stream(0), batch_size), batches(stream(1), batch_size)],
        "resumed": batches(resumed, batch_size),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
