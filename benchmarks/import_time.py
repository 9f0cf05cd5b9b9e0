"""Start-up cost: `import llavakit` and `llavakit --help` against an eager import of the model stack.

    .venv/bin/python benchmarks/import_time.py [--repeats 5]

Why: every command, test process and `torchrun` worker pays the import; the public API is
lazy so that `import llavakit` and the command's help load neither torch nor transformers.
Each measurement is a fresh interpreter; the table shows the median of `--repeats` runs and
the ratio eager / lazy. Goals: `import llavakit` under 0.3 s, `llavakit --help` under 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "import llavakit": [sys.executable, "-c", "import llavakit"],
    "llavakit --help": [str(Path(sys.executable).with_name("llavakit")), "--help"],
    "eager: import the model class": [sys.executable, "-c", "from llavakit import LlavaKitForCausalLM"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seconds(CASES["eager: import the model class"])  # warm the file cache once
    medians = {name: statistics.median(seconds(cmd) for _ in range(args.repeats)) for name, cmd in CASES.items()}
    eager = medians["eager: import the model class"]
    print(f"{'case':34} {'median s':>9} {'eager / this':>13}")
    for name, value in medians.items():
        print(f"{name:34} {value:9.3f} {eager / value:13.1f}")


if __name__ == "__main__":
    main()
