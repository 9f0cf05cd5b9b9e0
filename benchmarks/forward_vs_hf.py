"""Forward and generate time: llavakit vs transformers' LlavaForConditionalGeneration, same weights.

Run:  .venv/bin/python benchmarks/forward_vs_hf.py [--device cpu|cuda] [--repeats 7]

Both models hold the same weights (llavakit's exported with `export_to_transformers`) and
see the same inputs. Timings alternate between the two models and the median is kept, so
machine noise hits both alike. The ratio printed is transformers time / llavakit time:
1.0 means equal speed, above 1 llavakit is faster. Goal: >= 0.95 (composition costs nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from llavakit import LlavaKitForCausalLM
from llavakit.interop.transformers_llava import export_to_transformers
from llavakit.tiny import tiny_llava_config, tiny_text_config, tiny_vision_config

IMAGE_TOKEN = 1000


def build_models(device: str) -> tuple[LlavaKitForCausalLM, torch.nn.Module]:
    """A small (not tiny) model, so that the work dominates Python overhead on a CPU."""
    torch.manual_seed(0)
    config = tiny_llava_config(image_token_id=IMAGE_TOKEN, vocab_size=1024)
    config.vision_config = tiny_vision_config("clip", image_size=112, patch_size=14, hidden_size=128)
    config.text_config = tiny_text_config("llama", vocab_size=1024, hidden_size=256, num_hidden_layers=4)
    ours = LlavaKitForCausalLM(config).to(device).eval()
    theirs = export_to_transformers(ours).to(device).eval()
    return ours, theirs


def make_inputs(model: LlavaKitForCausalLM, batch: int, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    size = model.config.vision_config.image_size
    image_tokens = torch.full((batch, model.config.num_image_tokens), IMAGE_TOKEN)
    text = torch.randint(3, 900, (batch, 48), generator=generator)
    input_ids = torch.cat([text[:, :8], image_tokens, text[:, 8:]], dim=1)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator).to(device),
    }


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(name: str, run_ours, run_theirs, repeats: int, device: str) -> tuple[str, float, float]:
    run_ours(), run_theirs()  # warm-up
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(timed(run_ours, device))
        theirs.append(timed(run_theirs, device))
    return name, statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    ours, theirs = build_models(args.device)
    inputs = make_inputs(ours, args.batch, args.device)
    with torch.inference_mode():
        difference = (ours(**inputs).logits - theirs(**inputs).logits).abs().max().item()
        generate = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        same_tokens = torch.equal(ours.generate(**inputs, **generate), theirs.generate(**inputs, **generate))
        rows = [
            compare("forward", lambda: ours(**inputs), lambda: theirs(**inputs), args.repeats, args.device),
            compare(
                f"generate {args.new_tokens} tokens",
                lambda: ours.generate(**inputs, **generate),
                lambda: theirs.generate(**inputs, **generate),
                args.repeats,
                args.device,
            ),
        ]

    table = Table(title=f"llavakit vs transformers Llava ({args.device}, batch {args.batch}, median of {args.repeats})")
    for column in ("task", "llavakit s", "transformers s", "ratio (hf/llavakit)"):
        table.add_column(column)
    for name, mine, hf in rows:
        table.add_row(name, f"{mine:.4f}", f"{hf:.4f}", f"{hf / mine:.3f}")
    console = Console()
    console.print(table)
    console.print(f"max |logit difference| = {difference:.2e}; greedy tokens identical: {same_tokens}")


if __name__ == "__main__":
    main()
