"""Two CPU processes (torchrun, gloo) train as one process does with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_recipe, torchrun_train, varied_data
from llavakit.train.run import run_training

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data = varied_data(tmp_path / "data")
    overrides = [
        "model.connector_weights=null",
        "data.packing=true",
        "data.group_by_modality=true",
        "optimization.global_batch_size=8",
        "optimization.per_device_batch_size=4",
        "optimization.max_steps=4",
        "output.save_steps=0",
        "output.plot=false",
    ]
    # one process: 2 accumulation steps of 4 samples
    single = run_training(tiny_recipe("finetune", data, tmp_path / "one", *overrides))
    # two processes: 4 samples each, no accumulation; through the command line
    done = torchrun_train("finetune", data, tmp_path / "two", *overrides)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trained 4 step(s)" in done.stdout

    two_losses = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert [step for step, _ in two_losses] == [step for step, _ in single.losses] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(single.losses, two_losses):
        assert b == pytest.approx(a, rel=1e-4)
    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((tmp_path / "two" / "skipped_samples.json").read_text())["seen"] == single.skipped.seen == 32
