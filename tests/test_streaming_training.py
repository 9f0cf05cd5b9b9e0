"""`data.streaming`: training streams shards across ranks and workers, each sample once an epoch; resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import StopAfter, tiny_recipe, torchrun_train, varied_data
from llavakit.cli import main
from llavakit.errors import ConfigError
from llavakit.train.run import run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HERE = Path(__file__).resolve().parent
SAMPLES, PER_SHARD = 32, 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """32 image samples (answers of three lengths) as 8 tar shards of 4, through `llavakit data convert`."""
    folder = tmp_path_factory.mktemp("stream")
    data = varied_data(folder / "llava", SAMPLES)
    out = folder / "shards"
    assert main(["data", "convert", str(data), str(out), "--format", "shards", "--per-file", str(PER_SHARD)]) == 0
    assert len(list(out.glob("*.tar"))) == SAMPLES // PER_SHARD
    return out


def streamed(shards: Path, out: Path, *overrides: str):
    return tiny_recipe(
        "finetune",
        shards,
        out,
        "model.connector_weights=null",
        "data.streaming=true",
        "data.shuffle_buffer=3",
        "data.group_by_modality=false",
        "optimization.global_batch_size=8",
        "optimization.per_device_batch_size=4",  # 2 accumulation steps
        "optimization.epochs=2",  # 4 steps an epoch
        "output.save_steps=3",
        "output.plot=false",
        *overrides,
    )


@pytest.mark.parametrize("stop_at", [3, 6])  # inside the first epoch, inside the second
def test_a_streamed_run_resumes_where_it_stopped(shards, tmp_path, stop_at):
    whole = run_training(streamed(shards, tmp_path / "whole", "data.num_workers=2"))
    assert whole.global_step == 8 and whole.skipped.seen == 2 * SAMPLES  # every sample, each epoch
    run = tmp_path / "resumed"
    run_training(streamed(shards, run, "data.num_workers=2"), callbacks=[StopAfter(stop_at)])
    resumed = run_training(streamed(shards, run, "data.num_workers=2", "output.resume=true"))
    assert resumed.global_step == 8 and resumed.skipped.seen == 2 * SAMPLES
    for (step, a), (same_step, b) in zip(whole.losses, resumed.losses, strict=True):
        assert step == same_step and b == pytest.approx(a, rel=1e-5)
    expected, got = load_file(whole.output_dir / "model.safetensors"), load_file(run / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_the_same_shards_train_map_style_too(shards, tmp_path):
    result = run_training(streamed(shards, tmp_path / "map", "data.streaming=false"))
    assert result.global_step == 8 and result.skipped.seen == 2 * SAMPLES


def test_streaming_refuses_what_needs_random_access(shards, tmp_path):
    with pytest.raises(ConfigError) as error:
        streamed(shards, tmp_path / "run", "data.mixture_size=10", "data.group_by_modality=true")
    assert "data.mixture_size=10 needs random access" in str(error.value)
    assert "data.group_by_modality=true needs random access" in str(error.value)
    with pytest.raises(ConfigError, match="streaming reads tar shards or parquet files"):
        run_training(streamed(shards.parent / "llava" / "data.json", tmp_path / "json"))


def test_two_processes_by_two_workers_stream_every_sample_once(shards, tmp_path):
    """torchrun, 2 ranks x 2 workers: the union of the batches is the dataset in both epochs; a resume continues."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(HERE / "stream_ranks.py"), str(shards), str(tmp_path), "3", "2"]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    everything = sorted(f"s{i}" for i in range(SAMPLES))
    for epoch in (0, 1):
        seen = [sample for rank in ranks for batch in rank["epochs"][epoch] for sample in batch]
        assert sorted(seen) == everything  # all of it, nothing twice
    for rank in ranks:
        assert len(rank["epochs"][0]) == len(rank["epochs"][1]) == rank["length"]  # the loader's len is exact
        assert rank["epochs"][0] != rank["epochs"][1]  # a new order each epoch
        assert rank["resumed"] == rank["epochs"][1][2:]
    assert [len(rank["epochs"][0]) for rank in ranks][0] == [len(rank["epochs"][0]) for rank in ranks][1]


@pytest.mark.slow
def test_torchrun_training_streams_the_shards(shards, tmp_path):
    overrides = ["data.streaming=true", "data.num_workers=2", "data.group_by_modality=false"]
    overrides += ["model.connector_weights=null", "optimization.per_device_batch_size=4", "output.plot=false"]
    done = torchrun_train("finetune", shards, tmp_path / "two", *overrides)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trained 4 step(s)" in done.stdout  # 32 samples, global batch 8, 1 epoch
    assert json.loads((tmp_path / "two" / "skipped_samples.json").read_text())["seen"] == SAMPLES
