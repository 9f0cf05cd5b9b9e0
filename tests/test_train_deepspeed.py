"""DeepSpeed ZeRO-2 / ZeRO-3 on CPUs: two processes (torchrun, DeepSpeed's CPU accelerator) train as
one process does with the same global batch, and write a model that loads; FSDP is refused without GPUs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import llavakit.train.run as run_module
from conftest import CONFIGS, tiny_recipe, torchrun_train, varied_data
from llavakit.errors import ConfigError
from llavakit.model.checkpoint import load_checkpoint
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.train.arguments import check_distributed, has_sharding_accelerator
from llavakit.train.model_setup import TRAINABLE_WEIGHTS_NAME
from llavakit.train.recipes import resolve_config
from llavakit.train.run import TrainResult, run_training

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
# One global batch of 4: one process accumulates 2 x 2, two processes take 2 each.
SHARED = [
    "optimization.global_batch_size=4",
    "optimization.per_device_batch_size=2",
    f"optimization.max_steps={STEPS}",
    "output.save_steps=0",
    "output.plot=false",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class OneProcess:
    """The reference runs, in this process: stage 1, and stage 2 from stage 1's connector (`connector`)."""

    data: Path
    pretrain: TrainResult
    finetune: TrainResult
    connector: str


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> OneProcess:
    pytest.importorskip("deepspeed")  # before the reference runs, which only the DeepSpeed runs need
    folder = tmp_path_factory.mktemp("one_process")
    data = varied_data(folder / "data", n=12)
    pretrain = run_training(tiny_recipe("pretrain", data, folder / "pretrain", *SHARED))
    connector = f"model.connector_weights={pretrain.model_path}"
    finetune = run_training(tiny_recipe("finetune", data, folder / "finetune", connector, *SHARED))
    return OneProcess(data, pretrain, finetune, connector)


def assert_same_losses(reference: TrainResult, run_folder: Path) -> None:
    losses = json.loads((run_folder / "losses.json").read_text())
    assert [step for step, _ in losses] == [step for step, _ in reference.losses] == list(range(1, STEPS + 1))
    for (_, expected), (_, got) in zip(reference.losses, losses):
        assert got == pytest.approx(expected, rel=1e-4)


def assert_same_tensors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def assert_same_model(reference: Path, trained: Path) -> None:
    """Both folders load as llavakit checkpoints with the same weights and (close) logits."""
    expected, processor = load_checkpoint(reference, LlavaKitProcessor)
    got, _ = load_checkpoint(trained, LlavaKitProcessor)
    assert_same_tensors(expected.state_dict(), got.state_dict())
    inputs = processor("<image>\nWhat is in the picture?", images=Image.new("RGB", (32, 32), (200, 40, 40)))
    with torch.no_grad():
        torch.testing.assert_close(got(**inputs).logits, expected(**inputs).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "zero, recipe",
    [("zero2", "finetune"), ("zero3", "finetune"), ("zero3", "pretrain")],
    ids=["zero2-finetune", "zero3-finetune", "zero3-pretrain-trainable-only"],
)
def test_two_cpu_processes_under_deepspeed_match_one_process(zero, recipe, one_process, tmp_path):
    reference: TrainResult = getattr(one_process, recipe)
    overrides = [*SHARED, f"distributed.deepspeed={CONFIGS / 'deepspeed' / f'{zero}.json'}"]
    if recipe == "finetune":
        overrides.append(one_process.connector)  # loaded before DeepSpeed partitions anything
    else:
        overrides[overrides.index("output.save_steps=0")] = "output.save_steps=2"  # DeepSpeed's own checkpoint too
    done = torchrun_train(recipe, one_process.data, tmp_path / "run", *overrides, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"trained {STEPS} step(s)" in done.stdout

    assert_same_losses(reference, tmp_path / "run")
    if recipe == "finetune":
        assert_same_model(reference.model_path, tmp_path / "run")
    else:  # the stage-1 connector, gathered from the ZeRO-3 slices
        assert_same_tensors(load_file(reference.model_path), load_file(tmp_path / "run" / TRAINABLE_WEIGHTS_NAME))
        checkpoint = tmp_path / "run" / "checkpoint-2"
        assert (checkpoint / TRAINABLE_WEIGHTS_NAME).is_file() and (checkpoint / "global_step2").is_dir()


def test_fsdp_without_gpus_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    if has_sharding_accelerator():
        pytest.skip("this machine has an accelerator FSDP can shard over")

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the FSDP setting was checked")

    monkeypatch.setattr(run_module, "build_trainer", never)
    data = varied_data(tmp_path / "data", n=2)
    config = tiny_recipe("finetune", data, tmp_path / "run", "model.connector_weights=null", "distributed.fsdp=true")
    with pytest.raises(ConfigError, match=r"distributed\.fsdp=true needs GPUs.*DeepSpeed") as refused:
        run_training(config)
    assert "configs/deepspeed/zero3.json" in str(refused.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "zero_optimization, overrides, message",
    [
        ({"stage": 3}, [], "stage3_gather_16bit_weights_on_model_save"),
        (
            {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
            ["stage.lora.enabled=true", "output.merge_lora=true"],
            "cannot merge under ZeRO-3",
        ),
    ],
    ids=["zero3-without-gathering", "zero3-lora-merge"],
)
def test_zero3_settings_that_could_not_save_are_refused(tmp_path, zero_optimization, overrides, message):
    settings = tmp_path / "zero3.json"
    settings.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": zero_optimization}))
    overrides = [f"distributed.deepspeed={settings}", *overrides]
    config = resolve_config(tiny_recipe("finetune", tmp_path / "data.json", tmp_path / "run", *overrides))
    with pytest.raises(ConfigError, match=message):
        check_distributed(config)
