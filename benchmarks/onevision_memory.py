"""Peak memory of one OneVision-shaped training step, with and without gradient checkpointing.

Run: .venv/bin/python benchmarks/onevision_memory.py [--threads 2] [--image-side 2304]

Why: a OneVision single-image sample is the largest input llavakit trains on. Under
`anyres_max_9` a large image is cut into the 6x6 grid of 384-pixel crops plus the base image
(37 encoder inputs of 27x27 = 729 features each); the unpadded 162x162 feature map is shrunk
bilinearly to 81x81 (about 9 crops' worth), so the sample carries 729 + 6561 = 7290 visual
features, plus one row-end token per row of the reduced map: 7371 `<image>` tokens. The
activations of the vision tower over 37 crops and of the language model over ~7,400 tokens
dominate the step's memory, which is what gradient checkpointing is for; this shows how much
it saves.

The model is the spec of configs/models/llava-onevision-qwen2-0.5b.yaml (SigLIP, 384-pixel
crops, patch 14, strategy `full`, `anyres_max_9` over `(1x1),...,(6x6)`, image newline) with
the vision tower narrowed and shortened and a tiny Qwen2 language model, so one step runs on
a 2-core CPU; the crop size, patch grid and token counts are the real ones. Attention is sdpa
for every sub-model, as training sets it. The inputs come from llavakit's own processor: a
synthetic square image of `--image-side` pixels and a short conversation with labels on the
answers.

Each setting runs in a fresh interpreter (so the peaks do not mix): build the model, encode
the sample, then time one step (forward, backward, AdamW step). Printed per row: the peak
resident memory above what the process held just before the step (the kernel's VmHWM, reset
just before the step, minus the resident memory then; tracemalloc would not see torch's
allocations; a row is marked where the kernel refuses the reset and an earlier peak hides the
step's), the step's time, the loss (the same in both rows: checkpointing recomputes, it does
not change the math) and the parameter tensors that got a gradient (all but SigLIP's
post-layernorm, which the last layer's hidden states never pass through). The children run
with a fixed glibc mmap threshold, so that freed tensors leave the resident set at once; with
glibc's adaptive threshold, freed heap pages stay resident and the checkpointed run's
backward pass looks almost as large as the plain one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "configs" / "models" / "llava-onevision-qwen2-0.5b.yaml"
CONVERSATION = [
    {"from": "human", "value": "<image>\nDescribe the image in detail."},
    {"from": "gpt", "value": "A small green triangle next to a large yellow circle on a white background."},
    {"from": "human", "value": "What color is the square?"},
    {"from": "gpt", "value": "The square is blue."},
]


# ---- child: one training step ------------------------------------------------------------------


def resident_bytes() -> int:
    """The process's resident memory now (not the peak)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def reset_peak() -> bool:
    """Reset the kernel's peak resident memory (VmHWM) to the current one.

    So building and preprocessing do not count; False where the kernel refuses (the peak then
    covers the whole process).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def peak_bytes() -> int:
    """The process's peak resident memory since start or the last `reset_peak` (VmHWM, in KiB)."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    """The OneVision spec with a narrow, shallow SigLIP tower and a tiny Qwen2; and its processor."""
    from llavakit.model.build import build_model, load_model_spec
    from llavakit.processing.processor import LlavaKitProcessor
    from llavakit.tiny import build_tiny_tokenizer, tiny_text_config

    tokenizer = build_tiny_tokenizer()
    spec = load_model_spec(SPEC)
    vision = dict(
        spec.vision,
        hidden_size=args.vision_width,
        intermediate_size=args.vision_width * 4,
        num_hidden_layers=args.vision_layers,
        num_attention_heads=4,
    )
    language = tiny_text_config(
        "qwen2",
        vocab_size=len(tokenizer),
        hidden_size=args.text_width,
        intermediate_size=args.text_width * 4,
        num_hidden_layers=args.text_layers,
        max_position_embeddings=16384,
    )
    spec = dataclasses.replace(
        spec,
        vision=vision,
        language=language,
        image_token_id=tokenizer.convert_tokens_to_ids(spec.image_token),
        video_token=None,
        video_token_id=None,
    )
    model = build_model(spec)
    # As training does (llavakit.train.model_setup): backbones built from config mappings come without an
    # attention implementation, so name one for every sub-model.
    model.set_attn_implementation(args.attn)
    processor = LlavaKitProcessor.from_model_config(tokenizer, model.config, template="qwen_2")
    return model, processor


def synthetic_image(side: int) -> Any:
    """A square RGB image of `side` pixels: smooth gradients plus noise, so every crop differs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1), np.full((side, side), 128.0)], -1)
    pixels += rng.normal(0, 20, pixels.shape).astype(np.float32)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def train_step(model: Any, batch: dict[str, Any]) -> tuple[float, int]:
    """Forward, backward and one AdamW step; the loss and how many parameter tensors got a gradient."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = model(**batch).loss
    loss.backward()
    with_grad = sum(param.grad is not None for param in model.parameters())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), with_grad


def layout(config: Any, image_size: tuple[int, int]) -> dict[str, Any]:
    """How the image's visual tokens come about: grid, base features, the reduced map, row ends."""
    from llavakit.model import anyres

    side = config.feature_side
    rows, cols = anyres.anyres_grid_shape(image_size, config.grid_pinpoints, config.crop_size)
    max_crops = anyres.parse_anyres_max(config.image_mode)
    height, width = anyres.anyres_feature_shape(
        image_size, config.grid_pinpoints, config.crop_size, int(config.vision_config.patch_size), max_crops
    )
    return {
        "crop_size": config.crop_size,
        "grid": [rows, cols],
        "side": side,
        "unpadded": [rows * side, cols * side],
        "reduced": [height, width],
        "features": side * side + height * width,
        "row_ends": height if config.newline_in_images else 0,
        "config_visual_tokens": config.image_token_count(image_size),
    }


def child(args: argparse.Namespace) -> None:
    """Build, encode, then measure one step; print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, processor = build(args)
    model.train()
    if args.child == "on":
        model.gradient_checkpointing_enable()
    image = synthetic_image(args.image_side)
    sample = processor.encode_conversation(CONVERSATION, images=[image])
    batch = {key: value.unsqueeze(0) for key, value in sample.items() if key in ("input_ids", "labels")}
    batch.update({key: sample[key] for key in ("pixel_values", "image_sizes", "image_num_crops")})
    reset = reset_peak()
    before, peak_before = resident_bytes(), peak_bytes()
    start = time.perf_counter()
    loss, with_grad = train_step(model, batch)
    seconds = time.perf_counter() - start
    peak = peak_bytes()
    row = {
        "crops": int(sample["image_num_crops"].sum()),
        "visual_tokens": int((sample["input_ids"] == model.config.image_token_id).sum()),
        "sequence_length": int(sample["input_ids"].numel()),
        "answer_tokens": int((sample["labels"] != -100).sum()),
        "parameters": sum(param.numel() for param in model.parameters()),
        "peak_above_before": max(0, peak - before),
        "peak_set_before_step": not reset and peak <= peak_before,
        "seconds": seconds,
        "loss": loss,
        "with_grad": with_grad,
        "tensors": sum(1 for _ in model.parameters()),
        **layout(model.config, (image.height, image.width)),
    }
    print(json.dumps(row))


# ---- parent: both settings, the table ----------------------------------------------------------


def measure(args: argparse.Namespace, checkpointing: str) -> dict[str, Any]:
    """One setting in a fresh interpreter."""
    command = [sys.executable, __file__, "--child", checkpointing]
    for name in ("attn", "threads", "image_side", "vision_width", "vision_layers", "text_width", "text_layers"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    # A fixed mmap threshold: glibc then maps each large tensor on its own and unmaps it when freed,
    # so resident memory follows the live tensors instead of keeping freed heap pages.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the {checkpointing!r} run failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(row: dict[str, Any], args: argparse.Namespace) -> str:
    """The sample's shape: crops, where the visual tokens come from, sequence length, model size."""
    (rows, cols), side, (height, width) = row["grid"], row["side"], row["reduced"]
    unpadded = "x".join(map(str, row["unpadded"]))
    return (
        f"image {args.image_side}x{args.image_side} -> {row['crops']} crops of {row['crop_size']} px "
        f"(base + {rows}x{cols} grid), {side}x{side} = {side * side} features each\n"
        f"visual tokens: {side * side} base + {unpadded} grid map reduced to {height}x{width} = {height * width} "
        f"-> {row['features']} features + {row['row_ends']} row ends = {row['config_visual_tokens']} "
        f"(config image_token_count; in the sample: {row['visual_tokens']})\n"
        f"sequence {row['sequence_length']} tokens ({row['answer_tokens']} labelled); "
        f"{row['parameters'] / 1e6:.2f}M parameters; attention {args.attn}; {args.threads} threads"
    )


def report(off: dict[str, Any], on: dict[str, Any], args: argparse.Namespace) -> None:
    """The sample's shape, then the table with the ratio off / on."""
    print(describe(off, args))
    print("| gradient checkpointing | peak above before step, MB | step time, s | loss | tensors with gradient |")
    print("|---|---:|---:|---:|---:|")
    for name, row in (("off", off), ("on", on)):
        mark = " (peak set before the step)" if row["peak_set_before_step"] else ""
        print(
            f"| {name} | {row['peak_above_before'] / 2**20:.0f}{mark} | {row['seconds']:.1f} | {row['loss']:.4f} | "
            f"{row['with_grad']} of {row['tensors']} |"
        )
    ratio = off["peak_above_before"] / max(on["peak_above_before"], 1)
    print(f"| ratio off / on | {ratio:.2f} | {off['seconds'] / on['seconds']:.2f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each run")
    parser.add_argument("--image-side", type=int, default=2304, help="side of the square image (2304 = 6x6 crops)")
    parser.add_argument("--vision-width", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--text-width", type=int, default=64)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="attention implementation")
    parser.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    report(measure(args, "off"), measure(args, "on"), args)


if __name__ == "__main__":
    main()
