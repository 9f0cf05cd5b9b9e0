"""Stage recipes: what trains in each stage, at which rate, and the freezing that enforces it.

LLaVA trains in two stages (LLaVA-1.5's settings; `configs/` holds each paper's own):

| stage      | vision tower | connector | language model | lr                          | global batch | epochs |
|------------|--------------|-----------|----------------|-----------------------------|--------------|--------|
| `pretrain` | frozen       | trains    | frozen         | 1e-3 (MLP), 2e-3 (linear)   | 256          | 1      |
| `finetune` | frozen (a)   | trains    | trains (b)     | 2e-5 (LoRA: 2e-4, conn 2e-5)| 128          | 1      |

(a) OneVision unfreezes the vision tower in stage 2 at its own, lower rate: `stage.train_vision=true`
    trains it at `optimization.vision_lr` (the `finetune` default is OneVision's 2e-6).
(b) `stage.lora.enabled`: adapters on the language model, the connector trains fully.

`resolve_config` fills every null of a config from its stage recipe, so the run folder
records the numbers that were used. `freeze_for_stage` sets `requires_grad` per part and logs
the parameter counts; `parameter_groups` gives the optimizer one group per (part, decay).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from llavakit.errors import ConfigError
from llavakit.train.config import StageConfig, TrainConfig
from llavakit.train.config_checks import check_values

logger = logging.getLogger(__name__)

PARTS = ("vision", "connector", "llm")


@dataclass(frozen=True)
class StageRecipe:
    """Defaults of one stage; `lr` is the language model's (and, unless set, every part's) rate."""

    name: str
    train_vision: bool
    train_connector: bool
    train_llm: bool
    global_batch_size: int
    epochs: float
    lr: float
    lr_linear_connector: float | None = None  # LLaVA's linear projection was aligned at a higher rate
    vision_lr: float | None = None  # None: the language model's rate
    lora_lr: float = 2e-4
    lora_connector_lr: float = 2e-5


RECIPES = {
    "pretrain": StageRecipe(
        "pretrain",
        train_vision=False,
        train_connector=True,
        train_llm=False,
        global_batch_size=256,
        epochs=1,
        lr=1e-3,
        lr_linear_connector=2e-3,
    ),
    "finetune": StageRecipe(
        "finetune",
        train_vision=False,
        train_connector=True,
        train_llm=True,
        global_batch_size=128,
        epochs=1,
        lr=2e-5,
        vision_lr=2e-6,
    ),
}


def get_recipe(name: str) -> StageRecipe:
    if name not in RECIPES:
        raise ConfigError(f"config key 'stage.name': unknown stage {name!r}; known stages: {', '.join(RECIPES)}")
    return RECIPES[name]


def resolve_config(config: TrainConfig) -> TrainConfig:
    """A copy of `config` with the stage recipe's values in every null field it covers (checked before and after)."""
    check_values(config)
    config = copy.deepcopy(config)
    stage, optim = config.stage, config.optimization
    recipe = get_recipe(stage.name)
    for flag in ("train_vision", "train_connector", "train_llm"):
        if getattr(stage, flag) is None:
            setattr(stage, flag, getattr(recipe, flag))
    if stage.lora.enabled and not stage.train_llm:
        raise ConfigError("stage.lora.enabled needs stage.train_llm=true: LoRA adapters train the language model")
    if stage.lora.quantize not in (None, "4bit", "8bit"):
        raise ConfigError(f"stage.lora.quantize must be null, 4bit or 8bit, got {stage.lora.quantize!r}")
    if stage.lora.quantize and not stage.lora.enabled:
        raise ConfigError(
            "stage.lora.quantize (QLoRA) needs stage.lora.enabled=true: a quantized model trains through adapters"
        )
    if not (stage.train_vision or stage.train_connector or stage.train_llm):
        raise ConfigError(f"stage {stage.name!r} trains nothing: set one of train_vision, train_connector, train_llm")
    if optim.global_batch_size is None:
        optim.global_batch_size = recipe.global_batch_size
    if optim.epochs is None:
        optim.epochs = recipe.epochs
    if optim.lr is None:
        if stage.lora.enabled:
            optim.lr = recipe.lora_lr
        elif recipe.lr_linear_connector is not None and config.model.connector == "linear":
            optim.lr = recipe.lr_linear_connector
        else:
            optim.lr = recipe.lr
    if optim.connector_lr is None:
        optim.connector_lr = recipe.lora_connector_lr if stage.lora.enabled else optim.lr
    if optim.vision_lr is None:
        optim.vision_lr = recipe.vision_lr if recipe.vision_lr is not None else optim.lr
    check_values(config)
    return config


def gradient_accumulation_steps(global_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that per-device x accumulation x world size == global batch."""
    if min(global_batch_size, per_device_batch_size, world_size) < 1:
        raise ConfigError(
            f"batch sizes and world size must be positive, got global={global_batch_size}, "
            f"per_device={per_device_batch_size}, world_size={world_size}"
        )
    per_step = per_device_batch_size * world_size
    if global_batch_size % per_step:
        raise ConfigError(
            f"global batch {global_batch_size} is not a multiple of per_device_batch_size x world size = "
            f"{per_device_batch_size} x {world_size} = {per_step}; change optimization.per_device_batch_size"
        )
    return global_batch_size // per_step


# ---- parts and freezing --------------------------------------------------------------------------


def part_of(parameter_name: str) -> str:
    """`vision`, `connector` or `llm` for a parameter of LlavaKitForCausalLM (also wrapped by peft)."""
    if "vision_tower." in parameter_name:
        return "vision"
    if "multi_modal_projector." in parameter_name or parameter_name.split(".")[-1] == "image_newline":
        return "connector"
    if "language_model." in parameter_name:
        return "llm"
    raise ValueError(
        f"parameter {parameter_name!r} belongs to no known part (vision_tower, multi_modal_projector, language_model)"
    )


@dataclass
class PartCount:
    total: int = 0
    trainable: int = 0


@dataclass
class FreezeReport:
    """Parameter counts per part after freezing (what `freeze_for_stage` logs)."""

    stage: str
    parts: dict[str, PartCount] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        return sum(count.trainable for count in self.parts.values())

    @property
    def total(self) -> int:
        return sum(count.total for count in self.parts.values())

    def __str__(self) -> str:
        lines = [f"stage {self.stage}: {self.trainable:,} of {self.total:,} parameters train"]
        for part, count in self.parts.items():
            state = (
                "trains" if count.trainable == count.total else "frozen" if count.trainable == 0 else "partly trains"
            )
            lines.append(f"  {part:<10} {count.total:>14,} parameters  {count.trainable:>14,} trainable  ({state})")
        return "\n".join(lines)


def count_parameters(model: nn.Module, stage: str = "") -> FreezeReport:
    report = FreezeReport(stage, {part: PartCount() for part in PARTS})
    for name, parameter in model.named_parameters():
        count = report.parts[part_of(name)]
        count.total += parameter.numel()
        count.trainable += parameter.numel() if parameter.requires_grad else 0
    return report


def freeze_for_stage(model: nn.Module, stage: StageConfig) -> FreezeReport:
    """Set `requires_grad` per part as `stage` (resolved) says, log and return the counts.

    With LoRA the language model's own weights stay frozen here; peft adds the trainable adapters.
    """
    trains = {
        "vision": bool(stage.train_vision),
        "connector": bool(stage.train_connector),
        "llm": bool(stage.train_llm) and not stage.lora.enabled,
    }
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trains[part_of(name)])
    report = count_parameters(model, stage.name)
    logger.info("%s", report)
    return report


def parameter_groups(
    model: nn.Module,
    rates: dict[str, float],
    weight_decay: float,
    decay_names: Iterable[str],
) -> list[dict]:
    """Optimizer groups per (part, decay): each part at its rate; no weight decay on biases and norms.

    `decay_names`: the parameters that get weight decay (transformers' Trainer computes them).
    Only trainable parameters are grouped; empty groups are left out.
    """
    decay_names = set(decay_names)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((part_of(name), name in decay_names), []).append(parameter)
    result = []
    for part in PARTS:
        for decays in (True, False):
            params = groups.get((part, decays))
            if params:
                result.append(
                    {
                        "name": part if decays else f"{part}_no_decay",
                        "params": params,
                        "lr": rates[part],
                        "weight_decay": weight_decay if decays else 0.0,
                    }
                )
    return result


def part_rates(config: TrainConfig) -> dict[str, float]:
    """Learning rate of each part for a resolved config."""
    optim = config.optimization
    return {"vision": float(optim.vision_lr), "connector": float(optim.connector_lr), "llm": float(optim.lr)}


__all__ = [
    "PARTS",
    "RECIPES",
    "FreezeReport",
    "PartCount",
    "StageRecipe",
    "count_parameters",
    "freeze_for_stage",
    "get_recipe",
    "gradient_accumulation_steps",
    "parameter_groups",
    "part_of",
    "part_rates",
    "resolve_config",
]
