"""Peak memory of preprocessing images of extreme aspect ratio, in every image mode.

Run: .venv/bin/python benchmarks/preprocess_memory.py [--sides 3000 20000] [--modes square pad]

Why: a tiny PNG of 3000x1 pixels (90 bytes on disk) must not cost more memory to
preprocess than an ordinary photo. Before the fix, `square` resized the short side to the
encoder's input first (a 1,008,000 x 336 image for a 3000x1 file: about 1.3 GB) and `pad`
built a square canvas of the long side (memory growing with its square) before resizing.
Now both run Pillow's two resize passes themselves and leave out what the output never reads
(see llavakit.processing.images); the grid modes (`hd`, `anyres`, `anyres_max_9`) resize into
a canvas bounded by their largest grid.

Each (mode, image) runs in a fresh interpreter: the image is written as a PNG, decoded with
`load_image` as a dataset would, one ordinary image is preprocessed first (so lazy
allocations are done), then the extreme one. Printed per row: the output's size and the
peak resident memory above what the process held just before the call (Linux's VmHWM, reset
through /proc/self/clear_refs; where that cannot be reset, the peak since start, an upper
bound). Run it with PYTHONPATH pointing at an older llavakit to compare before and after.
The models' real sizes: `square` / `pad` at 336 (LLaVA-1.5), `hd` with 224-pixel cells
(LLaVA-1.5-HD), `anyres` at 336 with LLaVA-NeXT's grids, `anyres_max_9` at 384 with
OneVision's grids up to 6x6.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MODES = ("square", "pad", "hd", "anyres", "anyres_max_9")

CHILD = r"""
import io, json, resource, sys
import numpy as np
from PIL import Image
from llavakit.model import anyres
from llavakit.processing.highres import HighResConfig, preprocess_highres
from llavakit.processing.images import ImageProcessingConfig, load_image, preprocess

mode, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sizes = {"square": 336, "pad": 336, "hd": 224, "anyres": 336, "anyres_max_9": 384}
size = sizes[mode]
config = ImageProcessingConfig(mode="square" if mode == "square" else "pad", size=size)
pinpoints = {
    "hd": lambda: anyres.hd_pinpoints(224, 6),
    "anyres": lambda: [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)],
    "anyres_max_9": lambda: anyres.grid_pinpoints(384),
}
highres = HighResConfig(mode, size, 14, tuple(map(tuple, pinpoints[mode]()))) if mode in pinpoints else None

def run(image):
    if highres is None:
        return preprocess(image, config)
    return preprocess_highres(image, highres, config).pixel_values

def status(key: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key + ":"))

def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # Linux: VmHWM becomes the resident memory now
        return True
    except OSError:
        return False

buffer = io.BytesIO()
Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
png = buffer.getvalue()
run(load_image(Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))))
image = load_image(png)
exact = reset_peak()
before = status("VmRSS")
out = run(image)
peak = status("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"png_bytes": len(png), "output_bytes": out.nbytes, "shape": list(out.shape),
                  "peak_above_before": max(0, peak - before)}))
"""


def measure(mode: str, width: int, height: int) -> dict:
    """One (mode, image) in a fresh interpreter: output size and peak memory above the resident memory before."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(width), str(height)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[3000], help="long sides of the 1-pixel-thin images")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = parser.parse_args()
    print("| mode | image (w x h) | PNG bytes | output shape | output MB | peak above before, MB |")
    print("|---|---|---:|---|---:|---:|")
    for side in args.sides:
        for width, height in ((side, 1), (1, side)):
            for mode in args.modes:
                row = measure(mode, width, height)
                if "error" in row:
                    print(f"| {mode} | {width}x{height} | | error: {row['error']} | | |")
                    continue
                print(
                    f"| {mode} | {width}x{height} | {row['png_bytes']} | {tuple(row['shape'])} | "
                    f"{row['output_bytes'] / 2**20:.1f} | {row['peak_above_before'] / 2**20:.1f} |"
                )


if __name__ == "__main__":
    main()
