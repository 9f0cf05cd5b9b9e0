"""MM1-style pretraining from its recipes: the paper's settings, and the tiny version trained on the
synthetic world's captions, interleaved documents and text through `llavakit train`."""

from __future__ import annotations

import json

import pytest

from conftest import CONFIGS
from llavakit.cli import main
from llavakit.train.config import load_config
from llavakit.train.recipes import resolve_config


def test_mm1_recipe_holds_the_papers_settings():
    config = resolve_config(load_config(CONFIGS / "mm1" / "pretrain-3b.yaml"))
    model, data, optim = config.model, config.data, config.optimization
    assert (model.connector, model.connector_tokens) == ("c_abstractor", 144)
    assert [dataset.weight for dataset in data.datasets] == [45, 45, 10]
    assert [dataset.format for dataset in data.datasets] == [None, "interleaved", "text"]
    assert (optim.global_batch_size, data.max_length, optim.max_steps) == (512, 4096, 200000)
    assert config.stage.train_vision and config.stage.train_llm and data.packing  # the whole model pretrains


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_mm1_pretraining_on_captions_documents_and_text(tmp_path):
    world = tmp_path / "world"
    assert main(["data", "synth", str(world), "--n", "40"]) == 0
    for name in ("documents.jsonl", "text.jsonl"):
        assert (world / name).is_file(), name
    datasets = (
        f"[{{path: {world}/pretrain.json, image_folder: {world}, weight: 45}},"
        f" {{path: {world}/documents.jsonl, image_folder: {world}, weight: 45, format: interleaved}},"
        f" {{path: {world}/text.jsonl, weight: 10, format: text}}]"
    )
    run = tmp_path / "run"
    overrides = [f"data.datasets={datasets}", f"output.dir={run}", "output.progress_bar=false", "output.plot=false"]
    assert main(["train", str(CONFIGS / "tiny" / "mm1-pretrain.yaml"), *overrides, "optimization.max_steps=8"]) == 0
    losses = [loss for _, loss in json.loads((run / "losses.json").read_text())]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    skipped = json.loads((run / "skipped_samples.json").read_text())
    assert skipped["seen"] >= 64 and not skipped["skipped"], skipped
