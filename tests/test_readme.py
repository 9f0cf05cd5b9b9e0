"""The README's Python example runs as written, with tiny local backbones in place of the hub names."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionModel, LlamaForCausalLM

from llavakit.tiny import tiny_text_config, tiny_vision_config

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_LANGUAGE = "lmsys/vicuna-7b-v1.5"
HUB_VISION = "openai/clip-vit-large-patch14-336"


def _python_example() -> str:
    section = README.read_text(encoding="utf-8").split("## In Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture()
def local_backbones(tmp_path, tiny_tokenizer):
    """Folders that `from_pretrained` reads like the hub names: a tiny Vicuna-shaped LM with its tokenizer, a CLIP."""
    language, vision = tmp_path / "vicuna", tmp_path / "clip"
    LlamaForCausalLM(tiny_text_config()).save_pretrained(language)
    tiny_tokenizer.save_pretrained(language)
    CLIPVisionModel(tiny_vision_config()).save_pretrained(vision)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photo)
    return language, vision, photo


def test_readme_python_example_runs(local_backbones, capsys, one_torch_thread):
    language, vision, photo = local_backbones
    code = _python_example()
    assert HUB_LANGUAGE in code and HUB_VISION in code and '"photo.jpg"' in code
    code = code.replace(HUB_LANGUAGE, str(language)).replace(HUB_VISION, str(vision))
    code = code.replace('"photo.jpg"', repr(str(photo)))
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code, str(README), "exec"), namespace)
    model, inputs = namespace["model"], namespace["inputs"]
    assert model.dtype == torch.bfloat16
    assert int((inputs["input_ids"] == namespace["image_token_id"]).sum()) == model.config.num_image_tokens
    new_tokens = namespace["output"].shape[1] - inputs["input_ids"].shape[1]
    assert 1 <= new_tokens <= 64
    printed = capsys.readouterr().out.rstrip("\n")
    expected = namespace["processor"].decode(
        namespace["output"][0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert printed == expected
