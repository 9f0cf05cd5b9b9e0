"""How long the synthetic world and its data take to write: the demo's first phase, and `llavakit data synth`.

Run: .venv/bin/python benchmarks/synthetic_world.py [--scenes 500 2000] [--repeats 3]

Why: the demo and the test suite render whole worlds (the quick demo 1200 scenes, the full
one 2000, tests/test_instruct.py 500); the world should cost seconds, not minutes, next to
the training it feeds. Printed per world size: the seconds of `write_world` (drawing and
saving every scene's PNG, the scene files) and of `write_instruct_files` (stage-1 captions,
stage-2 instructions, the five evaluation sets), their total and the scenes per second, each
the best of `--repeats` runs (PIL draws on one thread).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from llavakit.synthetic.instruct import write_instruct_files
from llavakit.synthetic.world import write_world


def best_seconds(scenes: int, repeats: int) -> tuple[float, float]:
    """Best (world, instruction files) seconds over `repeats` fresh folders."""
    world_times, data_times = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            write_world(Path(folder), n=scenes, seed=0)
            middle = time.perf_counter()
            write_instruct_files(Path(folder), seed=0)
            world_times.append(middle - start)
            data_times.append(time.perf_counter() - middle)
    return min(world_times), min(data_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"best of {args.repeats} runs")
    print("| scenes | world (s) | instruction files (s) | total (s) | scenes / s |")
    print("|---:|---:|---:|---:|---:|")
    for scenes in args.scenes:
        world, data = best_seconds(scenes, args.repeats)
        total = world + data
        print(f"| {scenes} | {world:.2f} | {data:.2f} | {total:.2f} | {scenes / total:.0f} |")


if __name__ == "__main__":
    main()
