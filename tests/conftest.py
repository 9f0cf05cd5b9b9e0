"""Shared fixtures and builders: generic, offline, cheap.

The builders write what several test modules train or convert: tiny LLaVA-format datasets
with solid-colour images, the tiny recipes pointed at them, and an original-LLaVA checkpoint
folder. Import them by name (`from conftest import CONFIGS, tiny_recipe`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel, TrainerCallback

from llavakit.tiny import build_tiny_tokenizer, tiny_text_config, tiny_vision_config
from llavakit.train.config import TrainConfig, load_config

# The shipped YAML recipes and model specs.
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Solid colours a tiny model learns to name from the image alone.
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}

RGB = tuple[int, int, int]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny in-process BPE tokenizer (`<image>` and template tokens are single ids). Do not mutate it."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---- tiny LLaVA-format datasets ------------------------------------------------------------------


def conversation(question: str, answer: str | None = None) -> list[dict[str, str]]:
    """One human turn and, unless `answer` is None, the gpt turn that answers it (LLaVA's `conversations`)."""
    turns = [{"from": "human", "value": question}]
    return turns if answer is None else [*turns, {"from": "gpt", "value": answer}]


@dataclass(frozen=True)
class Sample:
    """One record of a tiny dataset.

    `image` is a file name in the dataset's folder, drawn in `colour` at `size` (width, height);
    without a `colour` nothing is drawn (a missing image, unless another sample drew that file).
    No `image`: a text-only sample.
    """

    id: str
    question: str
    answer: str | None
    image: str | None = None
    colour: RGB | None = None
    size: tuple[int, int] = (32, 32)

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id}
        if self.image is not None:
            record["image"] = self.image
        record["conversations"] = conversation(self.question, self.answer)
        return record


def write_llava_data(folder: Path, samples: Iterable[Sample], name: str = "data.json") -> Path:
    """Draw the samples' images into `folder` and write their records there as LLaVA JSON; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for sample in samples:
        if sample.image is not None and sample.colour is not None:
            Image.new("RGB", sample.size, sample.colour).save(folder / sample.image)
        records.append(sample.record())
    path = folder / name
    path.write_text(json.dumps(records))
    return path


def recipe_overrides(data: Path, out: Path, *overrides: str) -> list[str]:
    """Dotted overrides that train a recipe on `data` into `out` without a progress bar; `overrides` win."""
    return [f"data.datasets=[{{path: {data}}}]", f"output.dir={out}", "output.progress_bar=false", *overrides]


def tiny_recipe(stage: str, data: Path, out: Path, *overrides: str) -> TrainConfig:
    """configs/tiny/<stage>.yaml (`pretrain` or `finetune`) on `data`, into `out` (see `recipe_overrides`)."""
    return load_config(CONFIGS / "tiny" / f"{stage}.yaml", recipe_overrides(data, out, *overrides))


def varied_data(folder: Path, n: int = 32) -> Path:
    """Images with answers of three lengths, so packing and length grouping have something to do."""
    samples = [
        Sample(
            f"s{i}",
            "<image>\nWhat is in the picture?",
            "A red circle" + " next to a blue square" * (i % 3) + ".",
            f"{i}.png",
            (7 * i % 255, 200 - 5 * i, 90),
        )
        for i in range(n)
    ]
    return write_llava_data(folder, samples)


def torchrun_train(
    recipe: str, data: Path, out: Path, *overrides: str, timeout: float = 240
) -> subprocess.CompletedProcess:
    """`llavakit train configs/tiny/<recipe>.yaml` on `data` into `out`, on 2 CPU processes, one thread each."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "llavakit.cli",
        "train",
        str(CONFIGS / "tiny" / f"{recipe}.yaml"),
        *recipe_overrides(data, out, *overrides),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=CONFIGS.parent, env=environment, capture_output=True, text=True, timeout=timeout)


def pope_eval_args(checkpoint: Path, pope: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    """`llavakit eval` arguments for a POPE folder and its images (`pope`), 3 new tokens, batches of 2."""
    folder, images = pope
    return [
        "eval",
        str(checkpoint),
        "--task",
        "pope",
        "--data",
        str(folder),
        "--image-folder",
        str(images),
        "--output",
        str(out),
        "--max-new-tokens",
        "3",
        "--batch-size",
        "2",
        *extra,
    ]


class StopAfter(TrainerCallback):
    """Stops training after `step` optimizer steps, as a crash after the save would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny fixed-mode llavakit checkpoint (seed 0, vicuna_v1): what `llavakit eval` and friends load."""
    from llavakit.model.modeling import LlavaKitForCausalLM
    from llavakit.processing.processor import LlavaKitProcessor
    from llavakit.tiny import tiny_llava_config

    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, template="vicuna_v1")
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llava"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class WeightSnapshots(TrainerCallback):
    """The model's weights when training starts (`before`) and ends (`after`)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- an original LLaVA checkpoint ----------------------------------------------------------------


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights far from the near-zero default init, so that a wrong mapping shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def original_llava_checkpoint(
    tmp_path: Path,
    vision: str,
    text: str,
    projector: str,
    vision_inside: bool,
    extra_keys: dict[str, torch.Tensor] | None = None,
    vocab_size: int = 640,
) -> tuple[Path, Path, PreTrainedModel, PreTrainedModel, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Write an original-LLaVA folder from random parts.

    Returns (folder, vision folder, vision model, LLM, projector weights): the parts let a test
    compute the original model's forward by hand.
    """
    vision_model = randomized(AutoModel.from_config(tiny_vision_config(vision)), seed=4)
    llm = randomized(AutoModelForCausalLM.from_config(tiny_text_config(text, vocab_size=vocab_size)), seed=5)
    depth = 1 if projector == "linear" else 2
    generator = torch.Generator().manual_seed(6)
    dims = [vision_model.config.hidden_size] + [llm.config.hidden_size] * depth
    projector_weights = [
        (
            torch.randn(dims[i + 1], dims[i], generator=generator) * 0.1,
            torch.randn(dims[i + 1], generator=generator) * 0.1,
        )
        for i in range(depth)
    ]

    vision_folder = tmp_path / "vision"
    if vision_inside:  # only the config: the weights must come from the checkpoint
        vision_model.config.save_pretrained(vision_folder)
    else:
        vision_model.save_pretrained(vision_folder)

    weights = {key: tensor.clone() for key, tensor in llm.state_dict().items()}
    if projector == "linear":
        weights["model.mm_projector.weight"], weights["model.mm_projector.bias"] = projector_weights[0]
    else:
        for index, (weight, bias) in enumerate(projector_weights):
            weights[f"model.mm_projector.{2 * index}.weight"] = weight
            weights[f"model.mm_projector.{2 * index}.bias"] = bias
    if vision_inside:
        prefix = "model.vision_tower.vision_tower.vision_model."
        weights.update({prefix + key: tensor.clone() for key, tensor in vision_model.state_dict().items()})
        if vision == "clip":  # older transformers saved this buffer
            weights[prefix + "embeddings.position_ids"] = torch.arange(17)[None]
    weights.update(extra_keys or {})

    architecture = {"llama": "LlavaLlamaForCausalLM", "qwen2": "LlavaQwenForCausalLM"}[text]
    config = llm.config.to_dict()
    config.update(
        architectures=[architecture],
        model_type="llava" if text == "llama" else "llava_qwen",  # LLaVA-1.5's own configs say "llava"
        mm_vision_tower="openai/clip-vit-large-patch14-336" if vision_inside else str(vision_folder),
        mm_projector_type=projector,
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_hidden_size=vision_model.config.hidden_size,
        image_aspect_ratio="pad",
        mm_use_im_start_end=False,
        tune_mm_mlp_adapter=False,
        use_mm_proj=True,
    )
    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if vision_inside:
        torch.save(weights, folder / "pytorch_model.bin")
    else:
        save_file({key: tensor.contiguous() for key, tensor in weights.items()}, folder / "model.safetensors")
    return folder, vision_folder, vision_model, llm, projector_weights


# ---- generation ----------------------------------------------------------------------------------


def force_next_token(model: torch.nn.Module, token_id: int, scale: float = 50.0, **inputs: torch.Tensor) -> None:
    """Make `token_id` the greedy choice after row 0's prompt: its LM-head row along that position's hidden state."""
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]
        model.get_output_embeddings().weight[token_id] = hidden * scale / hidden.norm() ** 2
