"""The demo's backbone pretraining loops run on transformers' warmup + cosine learning-rate schedule."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, get_cosine_schedule_with_warmup

from llavakit.demo.backbones import LoopSettings, language_model_config, pretrain_language_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def schedule_rates(lr: float, warmup: int, steps: int) -> list[float]:
    """The rate of each of `steps` optimizer steps under transformers' schedule."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_language_model_loop_uses_transformers_schedule(tiny_tokenizer):
    torch.manual_seed(0)
    config = language_model_config(tiny_tokenizer, hidden_size=32, num_layers=1)
    settings = LoopSettings(steps=40, batch_size=2, lr=1e-3)
    texts = ["A small red circle is above a big blue square."] * 20
    pretrain_language_model(LlamaForCausalLM(config), texts, tiny_tokenizer, context=16, settings=settings)
    assert settings.warmup_steps == 2  # 5 % of 40
    assert settings.learning_rates == schedule_rates(1e-3, warmup=2, steps=40)
    # warmup from 0 to the peak at step 2, then a cosine down towards 0
    rates = settings.learning_rates
    assert rates[:3] == [0.0, 5e-4, 1e-3] and max(rates) == 1e-3
    assert all(later < earlier for earlier, later in zip(rates[2:], rates[3:])) and rates[-1] < 1e-5
    assert len(settings.losses) == 40


def test_saved_vision_tower_holds_the_trained_clip_weights(tmp_path, tiny_tokenizer):
    """The folder LLaVA loads must hold CLIP's trained vision weights, not a fresh initialisation."""
    from PIL import Image
    from transformers import CLIPVisionModel

    from llavakit.demo.backbones import pretrain_clip, vision_half

    paths = []
    for n, colour in enumerate(["red", "blue", "green", "yellow"]):
        paths.append(tmp_path / f"{n}.png")
        Image.new("RGB", (16, 16), colour).save(paths[-1])
    settings = LoopSettings(steps=3, batch_size=4, lr=1e-2)
    captions = ["a red square", "a blue square", "a green square", "a yellow square"]
    clip = pretrain_clip(paths, captions, tiny_tokenizer, 16, 8, 32, 1, settings)
    vision_half(clip).save_pretrained(tmp_path / "clip")
    reloaded = CLIPVisionModel.from_pretrained(tmp_path / "clip")
    trained = clip.vision_model.state_dict()
    assert set(reloaded.state_dict()) == set(trained)
    for name, weight in reloaded.state_dict().items():
        torch.testing.assert_close(weight, trained[name], rtol=0, atol=0, msg=name)
    # the loop really moved the weights away from a fresh tower of the same seed
    torch.manual_seed(0)
    fresh = CLIPVisionModel(clip.config.vision_config).state_dict()
    assert any(not torch.equal(fresh[name], trained[name]) for name in trained)
