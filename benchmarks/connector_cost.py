"""Training step time and peak memory per connector and visual token budget (MM1's knob).

Run: .venv/bin/python benchmarks/connector_cost.py [--threads 1] [--batch 4] [--steps 3]

Why: MM1 found the number of visual tokens per image matters far more than the connector's
design; the tokens are also what the language model pays for. This measures both sides of
that trade on one CPU: for each connector (`avg_pool`, `c_abstractor`, `attn_pool`,
`pixel_shuffle`) at 16, 64, 144 and 576 tokens per image, and LLaVA-1.5's `mlp2x_gelu` (576,
one token per patch) as the reference, one training step's time and peak memory.

The model: a CLIP tower at 336 pixels in 14-pixel patches (the real 24x24 = 576-feature map;
narrowed to `--vision-width` and `--vision-layers`, frozen, as in both LLaVA stages) and a tiny
Llama (`--text-width`, `--text-layers`) that trains with the connector. `pixel_shuffle` reaches
the four budgets with r = 6, 3, 2, 1. A batch is `--batch` samples of one image and a short
caption with labels on it.

Each setting runs in a fresh interpreter so the peaks do not mix (as benchmarks/onevision_memory.py,
whose peak measurement this reuses: the kernel's VmHWM reset before the measured steps, minus the
resident memory then; a fixed glibc mmap threshold so freed tensors leave the resident set). One
warm-up step, then `--steps` timed steps: the median time is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from onevision_memory import peak_bytes, reset_peak, resident_bytes

CAPTION = "A small green triangle next to a large yellow circle on a white background."


# ---- child: one setting ------------------------------------------------------------------------


def settings() -> list[tuple[str, dict[str, int]]]:
    """(connector, budget keys): the reference, then each budgeted connector at 16, 64, 144 and 576 tokens."""
    rows = [("mlp2x_gelu", {})]
    for tokens, ratio in ((16, 6), (64, 3), (144, 2), (576, 1)):
        rows += [
            ("avg_pool", {"connector_tokens": tokens}),
            ("c_abstractor", {"connector_tokens": tokens}),
            ("attn_pool", {"connector_tokens": tokens}),
            ("pixel_shuffle", {"connector_ratio": ratio}),
        ]
    return rows


def build(args: argparse.Namespace, connector: str, budget: dict[str, int]) -> tuple[Any, Any]:
    """The model (vision frozen) and its processor."""
    from llavakit.model.configuration import LlavaKitConfig
    from llavakit.model.modeling import LlavaKitForCausalLM
    from llavakit.processing.processor import LlavaKitProcessor
    from llavakit.tiny import build_tiny_tokenizer, tiny_text_config, tiny_vision_config

    tokenizer = build_tiny_tokenizer()
    vision = tiny_vision_config("clip", image_size=336, patch_size=14, hidden_size=args.vision_width)
    vision.num_hidden_layers = args.vision_layers
    text = tiny_text_config(
        "llama", vocab_size=len(tokenizer), hidden_size=args.text_width, num_hidden_layers=args.text_layers
    )
    config = LlavaKitConfig(
        vision_config=vision,
        text_config=text,
        connector=connector,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        **budget,
    )
    model = LlavaKitForCausalLM(config)
    model.set_attn_implementation("sdpa")
    model.vision_tower.requires_grad_(False)
    return model, LlavaKitProcessor.from_model_config(tokenizer, config, template="plain")


def batch_of(processor: Any, size: int) -> dict[str, Any]:
    """`size` caption samples with one random image each, padded into a batch."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(size):
        image = rng.integers(0, 256, (336, 336, 3), dtype=np.uint8)
        conversation = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": CAPTION}]
        samples.append(processor.encode_conversation(conversation, images=[image]))
    return {
        "input_ids": torch.stack([s["input_ids"] for s in samples]),
        "labels": torch.stack([s["labels"] for s in samples]),
        "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
    }


def child(args: argparse.Namespace) -> None:
    """Build, one warm-up step, then the timed steps under a fresh peak; print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    connector, budget = settings()[args.child]
    model, processor = build(args, connector, budget)
    model.train()
    batch = batch_of(processor, args.batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()  # allocates the optimizer state
    reset = reset_peak()
    before, peak_before = resident_bytes(), peak_bytes()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = peak_bytes()
    row = {
        "connector": connector,
        "budget": budget,
        "tokens": model.config.num_image_tokens,
        "sequence": int(batch["input_ids"].shape[1]),
        "connector_parameters": sum(p.numel() for p in model.multi_modal_projector.parameters()),
        "seconds": statistics.median(times),
        "peak_above_before": max(0, peak - before),
        "peak_set_before_step": not reset and peak <= peak_before,
    }
    print(json.dumps(row))


# ---- parent: every setting, the table ----------------------------------------------------------


def measure(args: argparse.Namespace, index: int) -> dict[str, Any]:
    """One setting in a fresh interpreter."""
    command = [sys.executable, __file__, "--child", str(index)]
    for name in ("threads", "batch", "steps", "vision_width", "vision_layers", "text_width", "text_layers"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"setting {settings()[index]} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """One table row per setting, the reference (mlp2x_gelu, 576 tokens) first."""
    print(
        f"CLIP 336 px / patch 14 (24x24 map), vision {args.vision_width} wide x {args.vision_layers} layers (frozen); "
        f"Llama {args.text_width} wide x {args.text_layers} layers; batch {args.batch}; "
        f"median of {args.steps} steps; {args.threads} thread(s); peak: resident memory above the process's "
        "just before the timed steps"
    )
    print("| connector | budget | tokens / image | sequence | connector params | step time, s | peak, MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        budget = ", ".join(f"{key}={value}" for key, value in row["budget"].items()) or "-"
        mark = " (peak set before the step)" if row["peak_set_before_step"] else ""
        print(
            f"| {row['connector']} | {budget} | {row['tokens']} | {row['sequence']} | "
            f"{row['connector_parameters'] / 1e6:.2f}M | {row['seconds']:.3f} | "
            f"{row['peak_above_before'] / 2**20:.0f}{mark} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    parser.add_argument("--batch", type=int, default=4, help="samples (one image each) per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--vision-width", type=int, default=256)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--text-width", type=int, default=256)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    report([measure(args, index) for index in range(len(settings()))], args)


if __name__ == "__main__":
    main()
