"""The quick demo end to end: every phase runs, every loss falls, the model reads the image, the checkpoint chats.

The accuracy bounds are on the held-out questions that only the image can answer and that
the quick run learns: the colour of a named object (chance 1/6, majority about 29 %) and
the object inside a box (chance 1/24, majority about 10 %). Each bound is a multiple of the
chance level and also clears the majority baseline, so guessing the most common answer fails.
"""

from __future__ import annotations

import json

import pytest
import torch

from llavakit.demo.pipeline import run_demo
from llavakit.demo.settings import preset
from llavakit.serve.chat import ChatSession, load_chat_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


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


# set, category (None: the whole set), lower bound as a multiple of chance, margin over majority.
# Measured on the quick run (seed 0, 2-core x86_64): colour 49.0 % (chance 16.7, majority 33.3),
# region 15.0 % (chance 4.2, majority 9.5).
GROUNDED_BOUNDS = [("vqa", "colour", 2.0, 0.05), ("region", None, 2.5, 0.0)]


@pytest.mark.parametrize(("name", "category", "times_chance", "over_majority"), GROUNDED_BOUNDS)
def test_held_out_accuracy_far_above_chance(demo, name, category, times_chance, over_majority):
    result = demo.results[name]
    metrics = result["metrics"] if category is None else result["groups"]["category"][category]
    bound = times_chance * metrics["chance"]
    assert metrics["accuracy"] >= bound, (name, category, metrics, f"bound {bound:.3f}")
    assert metrics["accuracy"] > metrics["majority"] + over_majority, (name, category, metrics)


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
