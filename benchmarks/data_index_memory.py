"""Resident memory of a large LLaVA JSON's index: llavakit's compact index vs `json.load` in each of 4 workers.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_index_memory.py [--records 665000] [--workers 4]

Why: LLaVA-1.5's mixture has 665K records. Held as parsed JSON (what `json.load` gives, and
what each dataloader worker ends up holding: reference counts write to every object, so the
pages fork shared get copied), it costs gigabytes per process. llavakit's index
(`llavakit.data.index`: each record's JSON bytes in one numpy buffer, sample ids likewise, a
few arrays for the mixture) is built once in the main process and never written again, so
forked workers share it.

What it does, once: writes a synthetic LLaVA JSON of `--records` records (an image path and
2-8 turns of text each, about LLaVA's record size), then

* `json.load`: in each of `--workers` fresh processes (one after another, to bound the
  machine's peak), the private memory (USS) the loaded list adds, after every record is touched;
* llavakit: the main process builds the training mixture (`read_mixture`, what `LlavaDataset`
  holds) and forks `--workers` workers that each read every record (as an epoch does); the
  cost is the main process's USS growth plus every worker's private growth (pages it copied).

Printed: both totals, their per-worker shares, and the ratio ours / json.load (goal <= 1/4).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

import psutil

VOCABULARY = (
    "the a man woman dog cat bus street table plate food red blue green white black standing sitting "
    "holding riding next to on in front of behind large small wooden picture image shows there is are "
    "what where how many color kind people person car train sign building sky water grass tree"
)
WORDS = VOCABULARY.split()


def uss() -> int:
    return psutil.Process().memory_full_info().uss


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def write_records(path: Path, count: int, seed: int = 0) -> None:
    """LLaVA-1.5-like records: a COCO-style image path and 1-4 question/answer pairs."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as file:
        file.write("[")
        for index in range(count):
            turns = []
            for turn in range(rng.randint(1, 4)):
                question = sentence(rng, 6, 16) + "?"
                turns.append({"from": "human", "value": ("<image>\n" if turn == 0 else "") + question})
                turns.append({"from": "gpt", "value": sentence(rng, 8, 40) + "."})
            record = {"id": f"{index:012d}", "image": f"coco/train2017/{index:012d}.jpg", "conversations": turns}
            file.write(("," if index else "") + json.dumps(record))
        file.write("]")


def json_load_worker(path: str, queue) -> None:
    before = uss()
    with open(path, encoding="utf-8") as file:
        records = json.load(file)
    touched = sum(len(record["conversations"]) for record in records)
    queue.put((uss() - before, touched))


def compact_worker(mixture, queue) -> None:
    before = uss()
    touched = sum(len(mixture.entries[index].record["conversations"]) for index in range(len(mixture.entries)))
    queue.put((uss() - before, touched))


def run_json_load(path: Path, workers: int) -> list[int]:
    context = multiprocessing.get_context("spawn")
    costs = []
    for _ in range(workers):
        queue = context.Queue()
        process = context.Process(target=json_load_worker, args=(str(path), queue))
        process.start()
        cost, _ = queue.get()
        process.join()
        costs.append(cost)
    return costs


def run_compact(path: Path, workers: int) -> tuple[int, list[int], float]:
    from llavakit.data.dataset import read_mixture
    from llavakit.data.records import DatasetSpec

    before = uss()
    start = time.perf_counter()
    mixture = read_mixture([DatasetSpec(path)], seed=0)
    build_seconds = time.perf_counter() - start
    main_cost = uss() - before
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=compact_worker, args=(mixture, queue)) for _ in range(workers)]
    for process in processes:
        process.start()
    costs = [queue.get()[0] for _ in processes]
    for process in processes:
        process.join()
    return main_cost, costs, build_seconds


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=665_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "llava_mix.json"
        write_records(path, args.records)
        print(f"{args.records:,} records, {path.stat().st_size / 2**20:,.0f} MiB of JSON, {args.workers} workers")
        baseline = run_json_load(path, args.workers)
        main_cost, worker_costs, build_seconds = run_compact(path, args.workers)
    ours = main_cost + sum(worker_costs)
    theirs = sum(baseline)
    print(f"json.load: {', '.join(mib(c) for c in baseline)} per worker; total {mib(theirs)}")
    print(
        f"llavakit index: {mib(main_cost)} in the main process (built in {build_seconds:.1f} s), "
        f"{', '.join(mib(c) for c in worker_costs)} copied by each worker; total {mib(ours)}"
    )
    print(f"per worker: {mib(ours / args.workers)} vs {mib(theirs / args.workers)}")
    print(f"ratio ours / json.load: {ours / theirs:.3f} (goal <= 0.25)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
