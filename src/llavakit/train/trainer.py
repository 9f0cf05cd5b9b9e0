"""`LlavaKitTrainer`: transformers' Trainer with the few things LLaVA training adds.

Everything else (accelerate, DDP, DeepSpeed ZeRO-2/3, FSDP, mixed precision, gradient
accumulation with token-weighted losses, resume, TensorBoard / wandb) is the Trainer's own.
The additions, each in one method:

* `create_optimizer`: one parameter group per part (vision tower, connector, language
  model) at its own rate, no weight decay on biases and norms (`stages.parameter_groups`);
* `_get_train_sampler`: LLaVA-1.5's modality-length grouping when `data.group_by_modality`,
  with megabatches of one global batch (per-device x accumulation x world size), so a
  1-process run with accumulation sees the same batches as an N-process run;
* `get_train_dataloader`: a streamed dataset (`data.streaming`) is already split across ranks
  and workers (`StreamingShardDataset`), so its DataLoader is not sharded again by accelerate;
  `StreamingEpochs` gives it each epoch's number (also in a resumed epoch, whose loader the
  Trainer rebuilds to skip the batches already trained);
* `get_batch_samples`: pops `skipped_samples` / `num_samples` from every batch before the
  forward pass, counts them (`skips.SkipReport`), stops the run as soon as the allowed share is
  provably exceeded (of the samples the whole run draws: steps x global batch), and swaps a
  batch whose every sample was bad for a filler batch that contributes zero loss (every rank
  must still run forward and backward, or DDP / ZeRO would wait forever);
* `compute_loss`: a batch no trainable part reaches (text only while only the connector
  trains) still gets a loss with a gradient (zero), so backward runs on every rank; an MoE
  language model's balance loss (already inside the loss) is kept and logged as `aux_loss`;
* `_save_checkpoint`: writes `checkpoint-N` (with the run's `train_config.yaml` and skip
  report) into `.staging/` and renames it into place, so a run killed mid-save never leaves a
  half-written checkpoint for `resume` to pick;
* `CurrentIntervals`: a resumed run saves and logs at the intervals of its own config, not
  the ones the checkpoint's `trainer_state.json` recorded;
* `_save` / `_load_from_checkpoint`: when the language model is frozen (stage 1) only the
  trainable weights are written (`trainable.safetensors`) and read back; under DeepSpeed
  ZeRO-3, whose processes each hold a slice of every weight, `save_model` gathers just those
  (all processes take part) instead of the whole model. A full model under ZeRO-3 is gathered
  by the Trainer itself (`stage3_gather_16bit_weights_on_model_save`, which
  `arguments.check_distributed` requires); a DeepSpeed run resumes through DeepSpeed's own
  checkpoint (`global_stepN/` in `checkpoint-N`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from llavakit.data.batching import ModalityLengthGroupedSampler
from llavakit.data.streaming import StreamingShardDataset
from llavakit.processing.processor import IGNORE_INDEX
from llavakit.train.config import CONFIG_NAME, TrainConfig, save_run_config
from llavakit.train.model_setup import (
    TRAINABLE_WEIGHTS_NAME,
    load_trainable_weights,
    save_trainable_weights,
)
from llavakit.train.recipes import parameter_groups, part_rates
from llavakit.train.skips import SkipPolicy, SkipReport

STAGING_DIR = ".staging"
NUM_SAMPLES_KEY = "num_samples"
SKIPPED_KEY = "skipped_samples"


class CountingCollator:
    """Wraps a collator and records how many samples (good and bad) each batch drew."""

    def __init__(self, collator: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]):
        self.collator = collator

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        batch[NUM_SAMPLES_KEY] = len(features)
        batch.setdefault(SKIPPED_KEY, [])
        return batch


class QuietProgressCallback(ProgressCallback):
    """Trainer's tqdm bar, with the latest loss and rate as its postfix instead of printed log dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {key: f"{logs[key]:.4g}" for key in ("loss", "learning_rate") if isinstance(logs.get(key), float)}
            if shown:
                self.training_bar.set_postfix(shown, refresh=False)


class CurrentIntervals(TrainerCallback):
    """Save and log at the intervals of this run's arguments.

    On resume the Trainer takes `save_steps` / `logging_steps` from the checkpoint's state; a
    resumed run may change them (`llavakit.train.resume`), and its config records the new ones.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


class StreamingEpochs(TrainerCallback):
    """Sets a streamed dataset's epoch (its file order and shuffle) as each epoch begins."""

    def __init__(self, dataset: StreamingShardDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # The epoch in progress: a resumed run starts inside it (state.epoch = 1.5 is epoch 1).
        self.dataset.set_epoch(int(state.epoch or 0))


class LlavaKitTrainer(Trainer):
    """Trainer for `LlavaKitForCausalLM` (plain, or wrapped by peft); `config` is the resolved run config."""

    def __init__(self, *args: Any, config: TrainConfig, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config = config
        self.skips = SkipReport()
        self.skip_policy = SkipPolicy(config.data.max_skipped_fraction, config.data.skip_check_min_samples)
        # Stage 1 keeps the (large) language model frozen: checkpoints hold only what trains.
        self.save_trainable_only = not config.stage.train_llm
        self._staging_root: str | None = None
        self._filler: dict[str, Any] | None = None
        self._aux_losses: list[torch.Tensor] = []  # MoE balance losses since the last log
        self.add_callback(CurrentIntervals())
        if isinstance(self.train_dataset, StreamingShardDataset):
            self.add_callback(StreamingEpochs(self.train_dataset))

    # ---- loss and logging ----------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The Trainer's loss, made differentiable when no trainable part reaches it; keeps an MoE's balance loss."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if not loss.requires_grad and model.training:
            # Text only while only the connector trains: a zero that touches every trainable
            # parameter, so backward runs and every DDP / ZeRO rank stays in step.
            loss = loss + sum(parameter.sum() * 0.0 for parameter in model.parameters() if parameter.requires_grad)
        aux_loss = outputs.get("aux_loss") if isinstance(outputs, Mapping) else None
        if aux_loss is not None and model.training:
            self._aux_losses.append(aux_loss.detach().float())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, with the mean balance loss of an MoE language model since the last log."""
        if "loss" in logs and self._aux_losses:
            logs["aux_loss"] = nested_gather(torch.stack(self._aux_losses), self.args.parallel_mode).mean().item()
            self._aux_losses.clear()
        super().log(logs, start_time)

    # ---- optimizer and sampler ---------------------------------------------------------------

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW (or `optimization.optimizer`) over per-part groups: own rate, no decay on biases and norms."""
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            groups = parameter_groups(
                opt_model, part_rates(self.config), self.args.weight_decay, self.get_decay_parameter_names(opt_model)
            )
            if not groups:
                raise ValueError("no parameter trains: check the stage's train_vision / train_connector / train_llm")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's loader; a stream's plain (it splits itself across ranks and workers; `configure`d)."""
        dataset = self.train_dataset
        if not isinstance(dataset, StreamingShardDataset):
            return super().get_train_dataloader()
        return DataLoader(
            dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.config.data.group_by_modality:
            return super()._get_train_sampler(dataset)
        # As LLaVA: one megabatch per optimizer step, cut into per-device batches that
        # accelerate hands to the ranks in turn (and to the accumulation steps in order).
        return ModalityLengthGroupedSampler(
            dataset.modality_lengths,
            batch_size=self.args.per_device_train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.seed,
        )

    # ---- bad samples ---------------------------------------------------------------------------

    def _filler_batch(self) -> dict[str, Any]:
        """One image sample whose labels are all ignored, collated like every batch (same keys, any
        image mode): every part runs forward and backward, nothing is learned."""
        if self._filler is None:
            processor = self.processing_class
            encoded = processor.encode_conversation(
                [{"from": "human", "value": processor.image_token}, {"from": "gpt", "value": "."}],
                images=[Image.new("RGB", (64, 64))],
            )
            encoded["labels"] = torch.full_like(encoded["labels"], IGNORE_INDEX)
            batch = self.data_collator([{**encoded, "sample_id": "filler"}])
            batch.pop(NUM_SAMPLES_KEY, None)
            batch.pop(SKIPPED_KEY, None)
            self._filler = batch
        return dict(self._filler)

    def _take_skips(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch = dict(batch)
        skipped = batch.pop(SKIPPED_KEY, [])
        self.skips.seen += int(batch.pop(NUM_SAMPLES_KEY, 0))
        self.skips.skipped += [(str(sample_id), str(reason)) for sample_id, reason in skipped]
        return batch if "input_ids" in batch else self._filler_batch()

    def planned_samples(self) -> int:
        """The most samples this run draws: every optimizer step draws at most one global batch."""
        return self.state.max_steps * self.config.optimization.global_batch_size

    def _check_skips(self) -> None:
        """Stop every rank alike when the bad share, summed over ranks, is (or will end) too high."""
        counts = torch.tensor([self.skips.seen, self.skips.num_skipped], device=self.args.device)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self.skip_policy.check(int(counts[0]), int(counts[1]), planned=self.planned_samples())

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(self._take_skips(next(epoch_iterator)))
            except StopIteration:
                break
        self._check_skips()
        batches, num_items = super().get_batch_samples(iter(batches), len(batches), device)
        if torch.is_tensor(num_items) and int(num_items.sum()) == 0:
            num_items = torch.ones_like(num_items)  # only filler batches: their zero sum stays zero
        return batches, num_items

    def gathered_skip_report(self) -> SkipReport:
        """Every rank's bad samples together (a collective call: all ranks must make it)."""
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            reports: list[SkipReport | None] = [None] * dist.get_world_size()
            dist.all_gather_object(reports, self.skips)
            return SkipReport.merge(report for report in reports if report is not None)
        return SkipReport.merge([self.skips])

    def restore_skip_report(self, checkpoint: str | Path) -> None:
        """On resume, rank 0 carries the counts saved with the checkpoint (they are already summed)."""
        saved = SkipReport.load(checkpoint)
        if saved is not None and self.args.process_index == 0:
            self.skips = saved

    # ---- checkpoints -----------------------------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        return self._staging_root if self._staging_root is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written to `.staging/checkpoint-N` and then renamed into place."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / STAGING_DIR
        report = self.gathered_skip_report()
        if self.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_root = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            report.save(staging / name)
            save_run_config(self.config, staging / name / CONFIG_NAME)  # what a resume is checked against
            publish_folder(staging / name, run_dir / name)
            if not any(staging.iterdir()):
                staging.rmdir()
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def is_zero3(self) -> bool:
        """Whether DeepSpeed partitions the parameters themselves (ZeRO stage 3) in this run."""
        plugin = self.accelerator.state.deepspeed_plugin if self.is_deepspeed_enabled else None
        return plugin is not None and plugin.zero_stage == 3

    def gathered_trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights, whole, on the saving process ({} elsewhere) under ZeRO-3.

        A collective call: every process gathers the slices of the trainable parameters only,
        so saving a stage-1 connector never assembles the frozen language model.
        """
        import deepspeed

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
        with deepspeed.zero.GatheredParameters([parameter for _, parameter in named]):
            if not self.args.should_save:
                return {}
            return {name: parameter.detach().cpu().clone() for name, parameter in named}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.save_trainable_only and self.is_zero3():
            self._save(output_dir, state_dict=self.gathered_trainable_state_dict())
            return
        super().save_model(output_dir, _internal_call)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.save_trainable_only:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        save_trainable_weights(state_dict if state_dict is not None else model.state_dict(), names, output_dir)
        model.config.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        weights = Path(resume_from_checkpoint) / TRAINABLE_WEIGHTS_NAME
        if weights.is_file():
            load_trainable_weights(model if model is not None else self.model, weights, "output.resume")
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


def publish_folder(source: Path, target: Path) -> None:
    """Move the complete folder `source` to `target` by rename (replacing an older `target`)."""
    if target.exists():
        old = source.with_name(source.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


__all__ = [
    "CountingCollator",
    "CurrentIntervals",
    "LlavaKitTrainer",
    "QuietProgressCallback",
    "STAGING_DIR",
    "publish_folder",
]
