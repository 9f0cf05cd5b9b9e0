"""AnyRes preprocessing: llavakit vs transformers' LlavaNext / OneVision image processors, side by side.

Run: .venv/bin/python benchmarks/preprocess_vs_hf.py [--repeats 5] [--threads 1]

Why: every training step and every served request of a LLaVA-NeXT / OneVision model cuts
each image into crops; a slow processor starves the GPU. This script preprocesses
scikit-image's bundled photos (converted to RGB once, outside the timing) with the same
settings in both libraries and prints, per setting, images per second of llavakit's
`anyres_crops`, of transformers' slow (PIL) processor and, when torchvision is installed,
its fast processor, the speed ratios and the largest absolute difference of the pixel
tensors (0 means bit-identical). Timings are the best of `--repeats` passes over all
photos; llavakit is timed on one thread and, with `--threads N` (default 2), spreading the
photos over a pool of N threads (PIL's resize releases the GIL). The slow processor's speed
is bounded by PIL's bicubic resizes, which both libraries must do to give identical pixels:
one thread cannot beat it by more than (its time) / (the resizes' time), printed as well.

It then prints the table of visual tokens per image for common sizes in every mode
(fixed, LLaVA-1.5-HD, LLaVA-NeXT, OneVision single / multi-image, video).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, SiglipVisionConfig

from llavakit.data.highres import HighResConfig, anyres_crops, preprocess_highres_batch, transformers_image_processor
from llavakit.data.images import CLIP_MEAN, CLIP_STD, ImageProcessingConfig
from llavakit.model import anyres
from llavakit.model.configuration import LlavaKitConfig

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
    kwargs = {k: v for k, v in slow.to_dict().items() if k in ("size", "crop_size", "image_grid_pinpoints", "image_mean", "image_std", "resample")}
    return cls(**kwargs)


def best_time(run, repeats: int) -> float:
    run()  # warm-up (imports, allocator)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def compare(name: str, highres: HighResConfig, config: ImageProcessingConfig, photos, repeats: int, threads: int) -> None:
    slow = transformers_image_processor(highres, config)
    fast = None
    try:
        fast = _build_fast(slow) if _has_torchvision() else None
    except Exception as error:  # a fast class that cannot take these settings is reported, not fatal
        print(f"  fast processor unavailable: {error}")

    ours = [anyres_crops(photo, highres, config) for photo in photos]
    theirs = [slow(photo, return_tensors="np") for photo in photos]
    max_diff = max(float(np.abs(o.pixel_values - t["pixel_values"][0]).max()) for o, t in zip(ours, theirs))
    sizes_equal = all(tuple(o.image_size) == tuple(t["image_sizes"][0]) for o, t in zip(ours, theirs))

    def run_ours():
        for photo in photos:
            anyres_crops(photo, highres, config)

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

    t_slow = best_time(run_slow, repeats)
    t_ours = best_time(run_ours, repeats)
    t_resize = best_time(run_resizes, repeats)
    n = len(photos)
    print(f"\n{name}: {n} photos, {sum(o.pixel_values.shape[0] for o in ours)} crops in all")
    print(f"  {'processor':<44} {'images/s':>9} {'slow / this':>12}")
    print(f"  {type(slow).__name__ + ' (slow, PIL)':<44} {n / t_slow:>9.1f} {1.0:>11.2f}x")
    print(f"  {'llavakit anyres_crops, 1 thread':<44} {n / t_ours:>9.1f} {t_slow / t_ours:>11.2f}x")
    print(f"  {'(bound on 1 thread: the PIL resizes alone)':<44} {n / t_resize:>9.1f} {t_slow / t_resize:>11.2f}x")
    if threads > 1:
        t_pool = best_time(lambda: preprocess_highres_batch(photos, highres, config, workers=threads), repeats)
        print(f"  {'llavakit preprocess_highres_batch, %d threads' % threads:<44} {n / t_pool:>9.1f} {t_slow / t_pool:>11.2f}x")
    if fast is not None:
        fast_out = [fast(photo, return_tensors="pt") for photo in photos]
        fast_diff = max(float(np.abs(o.pixel_values - f["pixel_values"][0].numpy()).max()) for o, f in zip(ours, fast_out))
        t_fast = best_time(lambda: [fast(photo, return_tensors="pt") for photo in photos], repeats)
        print(f"  {type(fast).__name__ + ' (fast, torchvision)':<44} {n / t_fast:>9.1f} {t_slow / t_fast:>11.2f}x")
        print(f"  max |llavakit - fast| = {fast_diff:.3g}")
    else:
        print("  fast (torchvision) processor: not installed, skipped")
    print(f"  max |llavakit - slow| = {max_diff:.3g}; image_sizes equal: {sizes_equal}")


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def _config(vision, image_mode: str, strategy: str, **fields) -> LlavaKitConfig:
    text = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    return LlavaKitConfig(
        vision_config=vision, text_config=text, image_mode=image_mode, vision_feature_select_strategy=strategy, **fields
    )


def token_table() -> None:
    """Visual tokens per image for the published geometries (patch features; newlines included)."""
    clip336 = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    clip224 = CLIPVisionConfig(image_size=224, patch_size=14, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    siglip = SiglipVisionConfig(image_size=384, patch_size=14, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    modes = {
        "LLaVA-1.5 fixed (CLIP-336)": (_config(clip336, "fixed", "default"), False),
        "LLaVA-1.5-HD (CLIP-224, <=6 cells)": (_config(clip224, "hd", "default"), False),
        "LLaVA-NeXT anyres (CLIP-336)": (_config(clip336, "anyres", "default"), False),
        "OneVision anyres_max_9 (SigLIP-384)": (_config(siglip, "anyres_max_9", "full", video_token_id=31), False),
        "OneVision multi-image (each image)": (_config(siglip, "anyres_max_9", "full", video_token_id=31), True),
    }
    header = f"{'image (h x w)':<14}" + "".join(f"{name:>38}" for name in modes)
    print("\nVisual tokens per image\n" + header)
    for size in TOKEN_TABLE_SIZES:
        row = f"{'%d x %d' % size:<14}"
        for config, base_only in modes.values():
            row += f"{config.image_token_count(size, base_only=base_only):>38}"
        print(row)
    video = modes["OneVision anyres_max_9 (SigLIP-384)"][0]
    frames = ", ".join(f"{n} frames: {video.video_token_count(n)}" for n in (8, 16, 32))
    print(f"\nOneVision video (27x27 per frame pooled 2x2 bilinear to 14x14, one newline): {frames}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="also time a thread pool of this size (1: skip)")
    args = parser.parse_args()
    photos = load_photos()
    for name, (highres, config) in settings().items():
        compare(name, highres, config, photos, args.repeats, args.threads)
    token_table()


if __name__ == "__main__":
    main()
