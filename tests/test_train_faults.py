"""Fault test: `llavakit train` killed with SIGKILL at three random steps, resumed each time, ends with the
weights of a run that was never interrupted (and every checkpoint on the way equals that run's).

Each kill lands wherever the run is when `checkpoint-k` appears: training step k+1, writing the next
checkpoint into `.staging/`, or renaming it into place. The killed runs are `llavakit train` processes
(one thread each); the uninterrupted run and the last resume run in the test's process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS, Sample, recipe_overrides, tiny_recipe, write_llava_data
from llavakit.train.run import run_training

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10
OVERRIDES = (
    "model.connector_weights=null",
    "data.group_by_modality=false",
    "optimization.global_batch_size=2",
    "optimization.per_device_batch_size=2",
    f"optimization.max_steps={STEPS}",
    "output.save_steps=1",
    "output.save_total_limit=null",
    "output.plot=false",
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pictures(folder: Path, n: int = 12) -> Path:
    samples = [
        Sample(
            f"s{i}",
            "<image>\nDescribe it.",
            "A square" + " that is small" * (i % 3) + ".",
            f"{i}.png",
            (20 * i, 80, 40),
        )
        for i in range(n)
    ]
    return write_llava_data(folder, samples)


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    overrides = recipe_overrides(data, out, *OVERRIDES, *extra)
    return [sys.executable, "-m", "llavakit.cli", "train", str(CONFIGS / "tiny/finetune.yaml"), *overrides]


def newest_step(out: Path) -> int:
    return max((int(path.name.split("-")[1]) for path in out.glob("checkpoint-*")), default=0)


def kill_when_saved(command: list[str], out: Path, step: int, log: Path, timeout: float = 120) -> None:
    """Start `command` and SIGKILL it as soon as it has saved `checkpoint-<step>` (or, when an earlier
    process got that far already, its first checkpoint), wherever the run then is."""
    step = max(step, newest_step(out) + 1)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (out / f"checkpoint-{step}").is_dir():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the run ended (status {process.returncode}) before checkpoint-{step}:\n{log.read_text()}")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL


def assert_same_weights(expected_file: Path, got_file: Path) -> None:
    expected, got = load_file(expected_file), load_file(got_file)
    assert expected.keys() == got.keys(), got_file
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=f"{got_file}: {name}")


@pytest.mark.slow
def test_killed_at_three_random_steps_and_resumed_ends_as_an_uninterrupted_run(tmp_path):
    data = pictures(tmp_path / "data")
    whole = tmp_path / "whole"
    run_training(tiny_recipe("finetune", data, whole, *OVERRIDES))
    kill_steps = sorted(random.Random(20240917).sample(range(1, STEPS - 1), 3))

    faulted = tmp_path / "faulted"
    for attempt, step in enumerate(kill_steps):
        resume = ["output.resume=true"] if attempt else []
        kill_when_saved(train_command(data, faulted, *resume), faulted, step, tmp_path / f"log{attempt}.txt")
    # the last resume runs in this process (the same code as the command, without another start-up)
    finished = run_training(tiny_recipe("finetune", data, faulted, *OVERRIDES, "output.resume=true"))
    assert finished.global_step == STEPS

    assert_same_weights(whole / "model.safetensors", faulted / "model.safetensors")
    saved = sorted(faulted.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert [path.name for path in saved] == [f"checkpoint-{k}" for k in range(1, STEPS + 1)]
    for checkpoint in saved:  # every resume point, too
        assert_same_weights(whole / checkpoint.name / "model.safetensors", checkpoint / "model.safetensors")
    assert not (faulted / ".staging").exists()
    losses, expected = (json.loads((run / "losses.json").read_text()) for run in (faulted, whole))
    assert [step for step, _ in losses] == list(range(1, STEPS + 1))
    assert [loss for _, loss in losses] == pytest.approx([loss for _, loss in expected], rel=1e-5)
    assert json.loads((faulted / "skipped_samples.json").read_text())["seen"] == STEPS * 2
