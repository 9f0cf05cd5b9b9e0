"""AnyRes preprocessing: llavakit vs transformers' LlavaNext / OneVision image processors, side by side.

Run: .venv/bin/python benchmarks/preprocess_vs_hf.py [--repeats 5] [--threads 1]

Why: every training step and every served request of a LLaVA-NeXT / OneVision model cuts
each image into crops; a slow processor starves the GPU. This script preprocesses
scikit-image's bundled photos (converted to RGB once, outside the timing) with the same
settings in both libraries and prints, per setting, images per second of llavakit's
`anyres_crops` with each resize backend (`pil`: bit-identical to transformers' PIL
processors; `torch`: torch's antialiased uint8 kernel, the one torchvision's resize and so
transformers' fast processors use), of transformers' slow (PIL) processor and, when
torchvision is installed, its fast processor; the speed ratios and the largest absolute
difference of the pixel tensors (0 means bit-identical). Timings are the best of
`--repeats` passes over all photos, everything on one thread (torch too), and with
`--threads N` (default 2) llavakit also spreads the photos over a pool of N threads. With
the `pil` backend the speed is bounded by PIL's bicubic resizes, which identical pixels
need: one thread cannot beat the slow processor by more than (its time) / (the resizes'
time), printed as well; the `torch` backend is not bound by them.

It then prints the table of visual tokens per image for common sizes in every mode
(fixed, LLaVA-1.5-HD, LLaVA-NeXT, OneVision single / multi-image, video).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig

from llavakit.interop.processor_export import transformers_image_processor
from llavakit.model import anyres
from llavakit.model.build import load_model_spec, model_config
from llavakit.model.configuration import LlavaKitConfig
from llavakit.processing.highres import HighResConfig, anyres_crops, preprocess_highres_batch
from llavakit.processing.images import CLIP_MEAN, CLIP_STD, ImageProcessingConfig

PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
    "stereo_motorcycle", "text",
)  # fmt: skip
NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
SIGLIP = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
TOKEN_TABLE_SIZES = (
    (224, 224), (336, 336), (384, 384), (480, 640), (640, 480), (600, 800), (768, 1024), (720, 1280),
    (1080, 1920), (1920, 1080), (2048, 2048), (3000, 4000), (100, 2000),
)  # fmt: skip


def load_photos() -> list[Image.Image]:
    """scikit-image's bundled photos as RGB PIL images (grey and RGBA ones converted as a loader would)."""
    from skimage import data

    photos = []
    for name in PHOTOS:
        array = getattr(data, name)()
        array = array[0] if isinstance(array, tuple) else array
        image = Image.fromarray(np.asarray(array, dtype=np.uint8))
        photos.append(image.convert("RGB"))
    return photos


def settings() -> dict[str, tuple[HighResConfig, ImageProcessingConfig]]:
    next_config = ImageProcessingConfig(mode="pad", size=336, mean=CLIP_MEAN, std=CLIP_STD)
    onevision_config = ImageProcessingConfig(mode="pad", size=384, mean=SIGLIP[0], std=SIGLIP[1])
    return {
        "LLaVA-NeXT (CLIP-336, 5 canvases)": (HighResConfig("anyres", 336, 14, NEXT_PINPOINTS), next_config),
        "OneVision (SigLIP-384, anyres_max_9)": (
            HighResConfig("anyres_max_9", 384, 14, tuple(anyres.grid_pinpoints(384))),
            onevision_config,
        ),
    }


def _build_fast(slow):
    """transformers' torchvision processor with the slow one's settings (needs torchvision)."""
    from transformers import LlavaNextImageProcessor, LlavaOnevisionImageProcessor

    cls = LlavaOnevisionImageProcessor if "Onevision" in type(slow).__name__ else LlavaNextImageProcessor
    kwargs = {
        k: v
        for k, v in slow.to_dict().items()
        if k in ("size", "crop_size", "image_grid_pinpoints", "image_mean", "image_std", "resample")
    }
    return cls(**kwargs)


def best_times(runs: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each run over `repeats` rounds; the runs take turns within a round, so a
    load change on a shared machine hits them all alike instead of whichever ran at that moment."""
    for run in runs.values():
        run()  # warm-up (imports, allocator)
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def compare(
    name: str, highres: HighResConfig, config: ImageProcessingConfig, photos, repeats: int, threads: int
) -> None:
    slow = transformers_image_processor(highres, config)
    fast = None
    try:
        fast = _build_fast(slow) if _has_torchvision() else None
    except Exception as error:  # a fast class that cannot take these settings is reported, not fatal
        print(f"  fast processor unavailable: {error}")

    fast_highres = dataclasses.replace(highres, resize_backend="torch")
    ours = [anyres_crops(photo, highres, config) for photo in photos]
    ours_torch = [anyres_crops(photo, fast_highres, config) for photo in photos]
    theirs = [slow(photo, return_tensors="np") for photo in photos]
    max_diff = max(float(np.abs(o.pixel_values - t["pixel_values"][0]).max()) for o, t in zip(ours, theirs))
    torch_diffs = [np.abs(o.pixel_values - t["pixel_values"][0]) for o, t in zip(ours_torch, theirs)]
    torch_max_diff = max(float(d.max()) for d in torch_diffs)
    torch_share = float(np.mean(np.concatenate([(d > 1e-6).ravel() for d in torch_diffs])))
    levels = torch_max_diff * min(config.std) * 255  # the largest difference in 8-bit levels
    sizes_equal = all(tuple(o.image_size) == tuple(t["image_sizes"][0]) for o, t in zip(ours, theirs))

    def run_ours():
        for photo in photos:
            anyres_crops(photo, highres, config)

    def run_ours_torch():
        for photo in photos:
            anyres_crops(photo, fast_highres, config)

    def run_slow():
        for photo in photos:
            slow(photo, return_tensors="np")

    def run_resizes():
        """Only the two bicubic resizes per photo (canvas and base image) that any identical output needs."""
        resample = Image.Resampling(slow.resample)
        for photo in photos:
            canvas = anyres.select_best_resolution((photo.height, photo.width), highres.grid_pinpoints)
            place = anyres.resize_and_pad_size((photo.height, photo.width), canvas)
            photo.resize((place.width, place.height), resample)
            photo.resize((config.size, config.size), resample)

    runs = {"slow": run_slow, "ours": run_ours, "ours_torch": run_ours_torch, "resizes": run_resizes}
    if threads > 1:
        runs["pool"] = lambda: preprocess_highres_batch(photos, highres, config, workers=threads)
    if fast is not None:
        runs["fast"] = lambda: [fast(photo, return_tensors="pt") for photo in photos]
    t = best_times(runs, repeats)
    n, t_slow = len(photos), t["slow"]

    def row(label: str, seconds: float) -> None:
        print(f"  {label:<48} {n / seconds:>9.1f} {t_slow / seconds:>11.2f}x")

    print(f"\n{name}: {n} photos, {sum(o.pixel_values.shape[0] for o in ours)} crops in all")
    print(f"  {'processor':<48} {'images/s':>9} {'slow / this':>12}")
    row(type(slow).__name__ + " (slow, PIL)", t_slow)
    row("llavakit anyres_crops, pil resize, 1 thread", t["ours"])
    row("(bound for pil: the PIL resizes alone)", t["resizes"])
    row("llavakit anyres_crops, torch resize, 1 thread", t["ours_torch"])
    if threads > 1:
        row(f"llavakit pil resize, {threads} threads", t["pool"])
    if fast is not None:
        fast_out = [fast(photo, return_tensors="pt") for photo in photos]
        fast_diff = max(
            float(np.abs(o.pixel_values - f["pixel_values"][0].numpy()).max()) for o, f in zip(ours, fast_out)
        )
        row(type(fast).__name__ + " (fast, torchvision)", t["fast"])
        print(f"  max |llavakit pil - fast| = {fast_diff:.3g}")
    else:
        print("  fast (torchvision) processor: not installed, skipped")
    print(f"  max |llavakit pil - slow| = {max_diff:.3g} (0: bit-identical); image_sizes equal: {sizes_equal}")
    print(
        f"  max |llavakit torch - slow| = {torch_max_diff:.3g} (= {levels:.1f} 8-bit levels), "
        f"on {100 * torch_share:.2f}% of the values"
    )


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


MODEL_SPECS = Path(__file__).resolve().parents[1] / "configs" / "models"


def token_table() -> None:
    """Visual tokens per image for the published geometries (patch features; newlines included), as Markdown."""
    clip336 = CLIPVisionConfig(
        image_size=336, patch_size=14, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    text = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    fixed = LlavaKitConfig(vision_config=clip336, text_config=text)
    hd, next_, onevision = (
        model_config(load_model_spec(MODEL_SPECS / f"{name}.yaml"))
        for name in ("llava-1.5-hd-13b", "llava-next-vicuna-7b", "llava-onevision-qwen2-7b")
    )
    modes = {
        "LLaVA-1.5 `fixed` (CLIP-336)": (fixed, False),
        "LLaVA-1.5-HD `hd` (CLIP-224, <= 6 cells)": (hd, False),
        "LLaVA-NeXT `anyres` (CLIP-336)": (next_, False),
        "OneVision `anyres_max_9` (SigLIP-384)": (onevision, False),
        "OneVision, each image of a multi-image sample": (onevision, True),
    }
    print("\nVisual tokens per image (newline tokens included)\n")
    print("| image (h x w) | " + " | ".join(modes) + " |")
    print("|---" * (len(modes) + 1) + "|")
    for size in TOKEN_TABLE_SIZES:
        counts = [config.image_token_count(size, base_only=base_only) for config, base_only in modes.values()]
        print(f"| {size[0]} x {size[1]} | " + " | ".join(str(c) for c in counts) + " |")
    frames = ", ".join(f"{n} frames: {onevision.video_token_count(n)}" for n in (8, 16, 32))
    print(f"\nOneVision video (27x27 per frame pooled 2x2 bilinear to 14x14, one newline): {frames}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="also time a thread pool of this size (1: skip)")
    parser.add_argument("--tokens-only", action="store_true", help="print the token table only (no timing)")
    args = parser.parse_args()
    if not args.tokens_only:
        torch.set_num_threads(1)  # the slow processor runs on one thread: compare like with like
        photos = load_photos()
        for name, (highres, config) in settings().items():
            compare(name, highres, config, photos, args.repeats, args.threads)
    token_table()


if __name__ == "__main__":
    main()
