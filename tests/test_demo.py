"""The quick demo end to end: every phase runs, every loss falls, the checkpoint chats.

The tiny model does not yet beat the majority baseline on held-out questions (it learns the
answer formats, not visual grounding), so no accuracy bound is asserted here yet.
"""

from __future__ import annotations

import json

import pytest
import torch

from llavakit.demo.pipeline import run_demo
from llavakit.demo.settings import preset
from llavakit.serve.chat import ChatSession, load_chat_model

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.set_num_threads(2)
    return run_demo(tmp_path_factory.mktemp("demo"), preset("quick"))


def test_evaluation_covers_every_set_with_baselines(demo):
    for name, result in demo.results.items():
        metrics = result["metrics"]
        assert metrics["n"] > 0, name
        assert 0.0 < metrics["chance"] < 1.0, name
        main = metrics.get("accuracy")
        assert main is not None and 0.0 <= main <= 1.0, (name, metrics)


def test_every_phase_trained(demo):
    for phase, losses in demo.losses.items():
        values = [loss for _, loss in losses]
        assert len(values) >= 5, phase
        head, tail = sum(values[:3]) / 3, sum(values[-3:]) / 3
        assert tail < head, (phase, head, tail)


def test_artefacts_and_chat(demo):
    assert (demo.output_dir / "losses.png").stat().st_size > 10_000
    summary = json.loads((demo.output_dir / "summary.json").read_text())
    assert summary["seconds"]["total"] > 0 and summary["peak_memory_mb"] > 0
    assert set(summary["results"]) == {"vqa", "counting", "ocr", "region", "pope"}
    model, processor = load_chat_model(demo.model_dir)
    answer = ChatSession(model, processor, demo.answer["image"], max_new_tokens=16).ask(demo.answer["question"])
    assert answer == demo.answer["prediction"]
