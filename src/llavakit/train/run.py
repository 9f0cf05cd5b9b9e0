"""One training run, from a config to a run folder: `llavakit train CONFIG.yaml [key=value ...]`.

    llavakit train configs/llava-1.5/pretrain-7b.yaml output.dir=runs/pretrain
    torchrun --nproc_per_node 8 -m llavakit.cli train configs/llava-1.5/finetune-7b.yaml \\
        model.connector_weights=runs/pretrain distributed.deepspeed=configs/deepspeed/zero3.json

The run folder (`output.dir`) receives, in order: `train_config.yaml` (the resolved config:
every rate, batch and epoch count actually used), `checkpoint-N/` folders (complete or absent),
then the final model, `skipped_samples.json`, `losses.json` ([step, loss] pairs) and `loss.png`.
A stage that keeps the language model frozen (stage 1) writes only `trainable.safetensors`,
`config.json` and the processor; a full stage writes a model that
`LlavaKitForCausalLM.from_pretrained` and `LlavaKitProcessor.from_pretrained` load from the
folder itself; a LoRA stage writes the peft adapter there, and with `output.merge_lora=true`
the merged model to `merged/`. Relative paths in a config are relative to the working folder.

`run_training(config)` is the same run for Python callers (the demo trains both stages
in-process with it); it returns a `TrainResult`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PrinterCallback, ProgressCallback, TrainerCallback, set_seed
from transformers.utils import logging as transformers_logging

from llavakit.data.batching import PackingCollator, PaddingCollator
from llavakit.data.dataset import LlavaDataset
from llavakit.data.records import DatasetSpec
from llavakit.data.streaming import StreamingShardDataset
from llavakit.errors import ConfigError
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.train.arguments import (
    check_distributed,
    rank_from_environment,
    training_arguments,
    world_size_from_environment,
)
from llavakit.train.config import CONFIG_NAME, DataConfig, TrainConfig, load_config, save_run_config
from llavakit.train.model_setup import (
    TRAINABLE_WEIGHTS_NAME,
    apply_lora,
    build_model_and_processor,
)
from llavakit.train.plots import plot_loss_curve
from llavakit.train.recipes import (
    count_parameters,
    freeze_for_stage,
    gradient_accumulation_steps,
    resolve_config,
)
from llavakit.train.run_folder import open_run_folder, prepare_run
from llavakit.train.skips import SkipReport, TooManyBadSamplesError
from llavakit.train.trainer import (
    CountingCollator,
    LlavaKitTrainer,
    QuietProgressCallback,
)

logger = logging.getLogger(__name__)

LOSS_PLOT_NAME = "loss.png"
LOSSES_NAME = "losses.json"
MERGED_DIR = "merged"


@dataclass
class TrainResult:
    """What a run produced.

    `model_path`: the final model folder (`LlavaKitForCausalLM.from_pretrained` loads it; with
    LoRA and no merge, the peft adapter folder), or, when `trainable_only` (stage 1), the
    `trainable.safetensors` file that a next stage's `model.connector_weights` takes.
    `losses`: (optimizer step, loss) as logged, resumed runs included.
    """

    output_dir: Path
    model_path: Path
    trainable_only: bool
    losses: list[tuple[int, float]]
    skipped: SkipReport
    wall_time: float
    global_step: int
    config: TrainConfig = field(repr=False)


def make_collator(data: DataConfig, processor: LlavaKitProcessor, flash_attention: bool = False):
    """Packing (several samples per row, no attention across them) or right padding."""
    pad = processor.tokenizer.pad_token_id
    if data.packing:
        return PackingCollator(data.max_length, pad_token_id=pad, return_flash_attn_kwargs=flash_attention)
    return PaddingCollator(pad, max_length=data.max_length)


def make_dataset(data: DataConfig, processor: LlavaKitProcessor) -> LlavaDataset | StreamingShardDataset:
    """The map-style mixture, or with `data.streaming` this rank's stream of the shards."""
    if not data.datasets:
        raise ValueError("data.datasets is empty: list at least one LLaVA-format .json / .jsonl file")
    specs = [DatasetSpec(**dataclasses.asdict(spec)) for spec in data.datasets]
    if data.streaming:
        return StreamingShardDataset(
            specs,
            processor,
            data.max_length,
            seed=data.seed,
            rank=rank_from_environment(),
            world_size=world_size_from_environment(),
            shuffle_buffer=data.shuffle_buffer,
        )
    return LlavaDataset(specs, processor, data.max_length, seed=data.seed, mixture_size=data.mixture_size)


def _use_quiet_progress(trainer: LlavaKitTrainer, show_bar: bool) -> None:
    """Keep the tqdm bar (with the loss as postfix), never the per-step dict printing."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if show_bar:
        trainer.add_callback(QuietProgressCallback())


def _losses(trainer: LlavaKitTrainer) -> list[tuple[int, float]]:
    return [(int(entry["step"]), float(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry]


def _report_skips(trainer: LlavaKitTrainer, output: Path) -> SkipReport:
    """Every rank's bad samples, written to the run folder and logged."""
    report = trainer.gathered_skip_report()
    if trainer.args.should_save:
        output.mkdir(parents=True, exist_ok=True)
        report.save(output)
    logger.log(logging.WARNING if report.skipped else logging.INFO, "bad samples: %s", report.summary())
    return report


def _save_final_model(trainer: LlavaKitTrainer, config: TrainConfig) -> tuple[Path, bool]:
    output = Path(config.output.dir)
    trainer.save_model(str(output))
    if trainer.save_trainable_only:
        return output / TRAINABLE_WEIGHTS_NAME, True
    if not config.stage.lora.enabled:
        return output, False
    if not config.output.merge_lora:
        return output, False
    merged_dir = output / MERGED_DIR
    if trainer.args.should_save:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(merged_dir)
        trainer.processing_class.save_pretrained(merged_dir)
    trainer.accelerator.wait_for_everyone()
    return merged_dir, False


def _release_deepspeed(trainer: LlavaKitTrainer) -> None:
    """Run the DeepSpeed engine's teardown now that everything is saved (accelerate's `free_memory`).

    ZeRO-3 keeps the model in DeepSpeed's own module state, and the model's hooks keep the
    engine and its optimizer alive after the Trainer is gone; left alone, the engine's teardown
    (hooks, optimizer buffers) would run only from its finalizer while the interpreter shuts
    down, after the process groups are closed.
    """
    if trainer.is_deepspeed_enabled:
        trainer.accelerator.free_memory()


def build_trainer(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> LlavaKitTrainer:
    """The model (frozen per stage, LoRA-wrapped if asked), data and Trainer of a resolved config."""
    optim = config.optimization
    accumulation = gradient_accumulation_steps(
        optim.global_batch_size, optim.per_device_batch_size, world_size_from_environment()
    )
    set_seed(optim.seed)  # the fresh connector (and tiny random backbones) start the same on every rank
    model, processor = build_model_and_processor(config)
    freeze_for_stage(model, config.stage)
    if config.stage.lora.enabled:
        model = apply_lora(model, config.stage)
        logger.info("with LoRA adapters:\n%s", count_parameters(model, config.stage.name))
    dataset = make_dataset(config.data, processor)
    # A stream's modalities are unknown up front: assume text-only samples may come.
    lengths = getattr(dataset, "modality_lengths", [-1])
    args = training_arguments(config, accumulation, has_text_only=any(n < 0 for n in lengths))
    if isinstance(dataset, StreamingShardDataset):  # its length (the Trainer counts steps by it)
        dataset.configure(args.dataloader_num_workers, args.per_device_train_batch_size)
    flash = (config.model.attn_implementation or "").startswith("flash")
    trainer = LlavaKitTrainer(
        model=model,
        args=args,
        data_collator=CountingCollator(make_collator(config.data, processor, flash)),
        train_dataset=dataset,
        processing_class=processor,
        callbacks=list(callbacks),
        config=config,
    )
    if config.distributed.fsdp and not trainer.is_fsdp_enabled:
        raise ConfigError(
            "distributed.fsdp=true, but accelerate did not turn FSDP on: it shards over GPUs only "
            "(launch with torchrun on a GPU machine), and plain DDP is what runs on CPUs"
        )
    _use_quiet_progress(trainer, config.output.progress_bar)
    return trainer


def run_training(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Train as `config` says (resolving stage defaults first) and return what the run produced.

    `callbacks`: extra transformers `TrainerCallback`s (e.g. to stop early or watch the loss).
    Before the model is built, the scale-out settings (`arguments.check_distributed`), the run
    folder, inputs and any checkpoint to resume are checked (`run_folder.prepare_run`): a
    `LlavaKitError` names what is wrong (`ConfigError`, `OutputExistsError`, `ResumeMismatchError`,
    `CheckpointError`, ...). Raises `TooManyBadSamplesError` when too many samples were skipped
    as bad (the report is still written to the run folder first).
    """
    start = time.perf_counter()
    config = resolve_config(config)
    check_distributed(config)  # FSDP without GPUs, DeepSpeed missing: refused before anything loads
    resume = prepare_run(config)
    trainer = build_trainer(config, callbacks)
    output = open_run_folder(config)
    if trainer.args.should_save:
        save_run_config(config, output / CONFIG_NAME)
    if resume is not None:
        trainer.restore_skip_report(resume)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    except TooManyBadSamplesError:
        _report_skips(trainer, output)
        raise
    report = _report_skips(trainer, output)
    trainer.skip_policy.check(report.seen, report.num_skipped, final=True)
    model_path, trainable_only = _save_final_model(trainer, config)
    losses = _losses(trainer)
    if trainer.args.should_save:
        (output / LOSSES_NAME).write_text(json.dumps([[step, loss] for step, loss in losses]) + "\n")
        if config.output.plot:
            plot_loss_curve(losses, output / LOSS_PLOT_NAME, title=f"{config.stage.name} loss")
    _release_deepspeed(trainer)
    return TrainResult(
        output_dir=output,
        model_path=model_path,
        trainable_only=trainable_only,
        losses=losses,
        skipped=report,
        wall_time=time.perf_counter() - start,
        global_step=trainer.state.global_step,
        config=config,
    )


def _summary(result: TrainResult) -> str:
    last = f"{result.losses[-1][1]:.4f}" if result.losses else "n/a"
    first = f"{result.losses[0][1]:.4f}" if result.losses else "n/a"
    return "\n".join(
        [
            f"trained {result.global_step} step(s) in {result.wall_time:.1f} s; loss {first} -> {last}",
            f"bad samples: {result.skipped.summary()}",
            f"model: {result.model_path}",
            f"run folder: {result.output_dir}",
        ]
    )


def train_main(config_path: str, overrides: list[str]) -> int:
    """`llavakit train CONFIG [key=value ...]`: run, print a short summary on the main process, return 0.

    `llavakit train --overwrite` adds the override `output.overwrite=true`.
    """
    config = load_config(config_path, overrides)
    main_process = rank_from_environment() == 0
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # The Trainer's own bar stays; the per-file bars of every checkpoint save would drown it.
    transformers_logging.disable_progress_bar()
    try:
        result = run_training(config)
    finally:
        _leave_process_group()
    if main_process:
        print(_summary(result))
    return 0


def _leave_process_group() -> None:
    """Close the launcher's process groups before exit, while the interpreter is still whole.

    A gloo group still referenced when the interpreter shuts down can abort a rank (SIGABRT) as
    its worker threads are torn down. DeepSpeed keeps a clone of the world group in its own module
    state, which only its own teardown releases; a collection then frees, while the interpreter
    is whole, what the finished run no longer references.
    """
    import gc

    import torch.distributed as dist

    deepspeed_comm = sys.modules.get("deepspeed.comm")  # imported only by a DeepSpeed run
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()  # torch's groups, then DeepSpeed's references to them
    elif dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python -m llavakit.train.run CONFIG.yaml [key=value ...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(train_main(sys.argv[1], sys.argv[2:]))
