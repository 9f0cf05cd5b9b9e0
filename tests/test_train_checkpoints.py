"""Checkpoints: a resumed run ends where an uninterrupted one does; a failed save leaves nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from conftest import Sample, StopAfter, tiny_recipe, write_llava_data
from llavakit.train.config import TrainConfig
from llavakit.train.run import run_training
from llavakit.train.trainer import LlavaKitTrainer, publish_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shapes_data(folder: Path, n: int = 32) -> Path:
    """Images with answers of different lengths, and a few text-only samples (two modalities to group)."""
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    samples = []
    for i in range(n):
        if i % 5 == 4:
            count = i % 7 + 1
            samples.append(Sample(f"t{i}", f"Count to {count}", " ".join(words[:count])))
        else:
            answer = "A square" + " that is small" * (i % 4) + "."
            colour = (10 * i % 255, 120, 30 * i % 255)
            samples.append(Sample(f"s{i}", "<image>\nDescribe the picture.", answer, f"{i}.png", colour))
    return write_llava_data(folder, samples)


def config_for(stage: str, data: Path, out: Path, *overrides: str) -> TrainConfig:
    return tiny_recipe(
        stage,
        data,
        out,
        "model.connector_weights=null",
        "optimization.global_batch_size=8",
        "optimization.per_device_batch_size=4",  # 2 accumulation steps
        "optimization.max_steps=6",
        "output.save_steps=3",
        "output.plot=false",
        "data.template=vicuna_v1",
        *overrides,
    )


def final_weights(result) -> dict[str, torch.Tensor]:
    path = result.model_path if result.trainable_only else result.model_path / "model.safetensors"
    return load_file(path)


@pytest.mark.parametrize(
    "stage, overrides",
    [
        ("finetune", ["data.packing=true", "data.group_by_modality=true"]),  # whole model + optimizer state
        ("pretrain", ["data.group_by_modality=false"]),  # trainable weights only
    ],
)
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, stage, overrides):
    data = shapes_data(tmp_path / "data")
    whole = run_training(config_for(stage, data, tmp_path / "whole", *overrides))
    interrupted = run_training(config_for(stage, data, tmp_path / "resumed", *overrides), callbacks=[StopAfter(3)])
    assert interrupted.global_step == 3
    assert get_last_checkpoint(str(tmp_path / "resumed")).endswith("checkpoint-3")
    resumed = run_training(config_for(stage, data, tmp_path / "resumed", "output.resume=true", *overrides))
    assert resumed.global_step == 6
    assert [step for step, _ in resumed.losses] == [1, 2, 3, 4, 5, 6]  # the log history continues
    for (_, a), (_, b) in zip(whole.losses, resumed.losses):
        assert a == pytest.approx(b, rel=1e-5)
    expected, got = final_weights(whole), final_weights(resumed)
    assert expected.keys() == got.keys()
    if stage == "pretrain":
        assert all(name.startswith("multi_modal_projector.") for name in got)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.skipped.seen == whole.skipped.seen == 6 * 8  # counts carried over the restart


def test_a_failed_save_leaves_the_last_complete_checkpoint(tmp_path, monkeypatch):
    data = shapes_data(tmp_path / "data")
    original = LlavaKitTrainer._save_rng_state

    def save_rng_state_or_crash(self, output_dir):
        if self.state.global_step == 6:
            raise OSError("disk full")
        original(self, output_dir)

    monkeypatch.setattr(LlavaKitTrainer, "_save_rng_state", save_rng_state_or_crash)
    with pytest.raises(OSError, match="disk full"):
        run_training(config_for("finetune", data, tmp_path / "run"))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3"]
    assert (run / ".staging" / "checkpoint-6").is_dir()  # the broken one never got its final name
    assert get_last_checkpoint(str(run)).endswith("checkpoint-3")
    monkeypatch.setattr(LlavaKitTrainer, "_save_rng_state", original)
    resumed = run_training(config_for("finetune", data, run, "output.resume=true"))
    assert resumed.global_step == 6 and sorted(p.name for p in run.glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-6",
    ]
    assert not (run / ".staging").exists()


def test_publish_folder_replaces_by_rename(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("new")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "a").write_text("old")
    (tmp_path / "target" / "b").write_text("old")
    publish_folder(tmp_path / "new", tmp_path / "target")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert [p.name for p in (tmp_path / "target").iterdir()] == ["a"] and (
        tmp_path / "target" / "a"
    ).read_text() == "new"


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    data = shapes_data(tmp_path / "data", n=8)
    with pytest.raises(ValueError, match=r"output.resume=true but .* holds no checkpoint-N folder"):
        run_training(config_for("finetune", data, tmp_path / "empty", "output.resume=true"))
    with pytest.raises(ValueError, match="checkpoint folder .*nowhere does not exist"):
        run_training(config_for("finetune", data, tmp_path / "empty", f"output.resume={tmp_path / 'nowhere'}"))
