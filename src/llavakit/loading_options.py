"""The command-line options that say how a checkpoint loads, shared by chat, eval and serve (a foundation module)."""

from __future__ import annotations

import argparse

from llavakit.errors import ConfigError


def add_loading_options(parser: argparse.ArgumentParser) -> None:
    """Device, dtype, big-model placement and bitsandbytes quantization, passed on to `load_checkpoint`."""
    loading = parser.add_argument_group("loading the model")
    loading.add_argument(
        "--device", help="cpu, cuda, cuda:1, mps, ... (default: cpu; checked before loading; not with --device-map)"
    )
    loading.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float16", "float32"),
        help="weights and compute dtype; auto: the checkpoint's own (default: float32 when the model runs on the "
        "CPU, where half precision is slow and float16 slowest; auto when it runs on a GPU)",
    )
    loading.add_argument(
        "--device-map",
        choices=("auto", "balanced", "balanced_low_0", "sequential"),
        help="spread the model over all GPUs, then the CPU (accelerate's big-model placement); replaces --device",
    )
    quantize = loading.add_mutually_exclusive_group()
    quantize.add_argument(
        "--load-in-4bit",
        action="store_true",
        help="quantize the language model to 4-bit NF4 (bitsandbytes, CUDA only); vision tower and connector stay",
    )
    quantize.add_argument(
        "--load-in-8bit", action="store_true", help="quantize the language model to 8-bit (bitsandbytes, CUDA only)"
    )


def quantization_mode(load_in_4bit: bool, load_in_8bit: bool) -> str | None:
    """`load_checkpoint`'s quantization argument from the two flags ("4bit", "8bit" or None)."""
    if load_in_4bit and load_in_8bit:
        raise ConfigError("choose one of 4-bit and 8-bit loading, not both")
    return "4bit" if load_in_4bit else "8bit" if load_in_8bit else None
