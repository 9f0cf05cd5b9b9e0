"""Training throughput: llavakit (packing + modality-length grouping) vs transformers' Llava with padding.

Run:  .venv/bin/python benchmarks/train_throughput.py [--samples 256] [--batch 16] [--accumulation 2] [--threads N]

Both sides train the same small model (llavakit's, exported to `LlavaForConditionalGeneration`
with `export_to_transformers`, so the weights are identical) for one epoch over the same
synthetic LLaVA-format data, through transformers' Trainer, same optimizer, batch size and
precision, the vision tower frozen on both (LLaVA's stage 2). llavakit runs
`llavakit.train.run.run_training` with `data.packing=true` and
`data.group_by_modality=true`; transformers runs a plain `Trainer` with right padding and
random batches, as a LLaVA fine-tuning script without those would. Answers vary from a few
words to a few hundred, as in LLaVA's instruction mixture, and a fifth of the samples are
text-only.

Printed: non-padding tokens per second of each (every sample is seen once, so both process
the same real tokens; padding is the difference), their ratio (goal >= 1.5), and the loss of
one shared batch on both models before training (the same number: packing changes nothing
but the layout). One run; timings on a shared machine move by a few percent.

Packing saves the pad positions of every layer, but with sdpa / eager attention a packed row
still computes its full (row length)^2 score matrix under a block-diagonal mask, so rows much
longer than the samples give part of the gain back; `MAX_LENGTH` (the row size, and the
sample limit of both sides) is set near the longest sample. With flash-attention's varlen
kernels on a GPU each sample attends only within itself and that cost disappears.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from llavakit import LlavaKitForCausalLM
from llavakit.data.batching import PackingCollator, PaddingCollator
from llavakit.data.dataset import LlavaDataset
from llavakit.data.records import DatasetSpec
from llavakit.interop.transformers_llava import export_to_transformers
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import (
    build_tiny_tokenizer,
    tiny_llava_config,
    tiny_text_config,
    tiny_vision_config,
)
from llavakit.train.config import load_config
from llavakit.train.run import run_training

WORDS = [
    "red",
    "green",
    "blue",
    "circle",
    "square",
    "triangle",
    "left",
    "right",
    "top",
    "bottom",
    "small",
    "large",
    "there",
    "is",
    "a",
    "the",
    "and",
]
MAX_LENGTH = 512


def write_data(folder: Path, samples: int, seed: int) -> Path:
    """LLaVA-format records: image questions with answers of 3..250 words, and text-only chats."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(samples):
        words = int(math.exp(rng.uniform(math.log(3), math.log(250))))  # log-uniform: many short, some long
        answer = " ".join(rng.choice(WORDS) for _ in range(words))
        if i % 5 == 4:
            records.append(
                {
                    "id": f"t{i}",
                    "conversations": [
                        {"from": "human", "value": "Tell me about shapes."},
                        {"from": "gpt", "value": answer},
                    ],
                }
            )
            continue
        Image.new("RGB", (64, 48), tuple(rng.randrange(256) for _ in range(3))).save(folder / f"{i}.png")
        records.append(
            {
                "id": f"s{i}",
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the picture."},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path


def build_checkpoint(folder: Path) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor]:
    """A small (not tiny) model, so that the work dominates Python overhead on a CPU; saved for run_training."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_llava_config(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    config.vision_config = tiny_vision_config("clip", image_size=112, patch_size=14, hidden_size=128)
    config.text_config = tiny_text_config("llama", hidden_size=256, num_hidden_layers=4)
    set_seed(0)
    model = LlavaKitForCausalLM(config)
    processor = LlavaKitProcessor.from_model_config(tokenizer, config, template="vicuna_v1", image_aspect="pad")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def shared_batch_losses(model, exported, dataset: LlavaDataset, pad_id: int, size: int = 8) -> tuple[float, float]:
    """Mean token loss of the first `size` samples: llavakit on the packed batch, transformers on the padded one."""
    items = [dataset[i] for i in range(size)]
    packed = PackingCollator(MAX_LENGTH, pad_token_id=pad_id)(items)
    padded = PaddingCollator(pad_id, max_length=MAX_LENGTH)(items)
    packed.pop("skipped_samples")
    padded.pop("skipped_samples")
    with torch.no_grad():
        ours = model.eval()(**packed).loss.item()
        theirs = exported.eval()(**padded).loss.item()
    return ours, theirs


class TrainTimer(TrainerCallback):
    """Seconds between the start and the end of `Trainer.train`'s loop (loading and saving excluded)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


class _DropSkipped:
    """transformers' Llava knows nothing of skipped-sample reports; the padding collator's list goes."""

    def __init__(self, collator: PaddingCollator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator(features)
        batch.pop("skipped_samples", None)
        return batch


def train_transformers(exported, dataset: LlavaDataset, pad_id: int, batch: int, accumulation: int, out: Path) -> float:
    """Plain Trainer, padding, random batches; the vision tower frozen as in llavakit's stage 2."""
    exported.model.vision_tower.requires_grad_(False)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        optim="adamw_torch",
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
    )
    timer = TrainTimer()
    trainer = Trainer(
        model=exported.train(),
        args=args,
        train_dataset=dataset,
        callbacks=[timer],
        data_collator=_DropSkipped(PaddingCollator(pad_id, max_length=MAX_LENGTH)),
    )
    trainer.train()
    return timer.seconds


def train_llavakit(checkpoint: Path, data: Path, batch: int, accumulation: int, out: Path) -> float:
    config = load_config(
        None,
        [
            f"model.checkpoint={checkpoint}",
            f"data.datasets=[{{path: {data}}}]",
            "data.template=vicuna_v1",
            f"data.max_length={MAX_LENGTH}",
            "data.packing=true",
            "data.group_by_modality=true",
            "stage.name=finetune",
            f"optimization.global_batch_size={batch * accumulation}",
            f"optimization.per_device_batch_size={batch}",
            "optimization.epochs=1",
            "optimization.lr=1e-4",
            "optimization.connector_lr=1e-4",
            "optimization.seed=0",
            "optimization.gradient_checkpointing=false",
            "optimization.precision=auto",
            "optimization.optimizer=adamw_torch",
            f"output.dir={out}",
            "output.save_steps=0",
            "output.report_to=none",
            "output.plot=false",
            "output.progress_bar=false",
        ],
    )
    timer = TrainTimer()
    run_training(config, callbacks=[timer])
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="per-device batch (LLaVA-1.5: 16)")
    parser.add_argument("--accumulation", type=int, default=2, help="gradient accumulation steps")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_data(root / "data", args.samples, seed=0)
        model, processor = build_checkpoint(root / "checkpoint")
        exported = export_to_transformers(model)
        dataset = LlavaDataset([DatasetSpec(data)], processor, MAX_LENGTH)
        pad_id = processor.tokenizer.pad_token_id
        lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
        tokens = sum(lengths)
        ours_loss, theirs_loss = shared_batch_losses(model, exported, dataset, pad_id)

        theirs_time = train_transformers(exported, dataset, pad_id, args.batch, args.accumulation, root / "hf")
        ours_time = train_llavakit(root / "checkpoint", data, args.batch, args.accumulation, root / "llavakit")

    ours_rate, theirs_rate = tokens / ours_time, tokens / theirs_time
    table = Table(
        title=f"one epoch: {len(lengths)} samples, {tokens:,} real tokens "
        f"(lengths {min(lengths)}..{max(lengths)}), batch {args.batch} x {args.accumulation}"
    )
    for column in ("", "seconds", "real tokens / s", "shared-batch loss"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("llavakit (packing + grouping)", f"{ours_time:.1f}", f"{ours_rate:,.0f}", f"{ours_loss:.6f}")
    table.add_row("transformers Llava (padding)", f"{theirs_time:.1f}", f"{theirs_rate:,.0f}", f"{theirs_loss:.6f}")
    console.print(table)
    console.print(f"throughput ratio llavakit / transformers: {ours_rate / theirs_rate:.2f}x (goal >= 1.5)")
    console.print(f"shared-batch loss difference: {abs(ours_loss - theirs_loss):.2e}")


if __name__ == "__main__":
    main()
