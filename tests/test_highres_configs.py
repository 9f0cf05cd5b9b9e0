"""The model specs in configs/models/: they load, carry the published shapes, count the published
numbers of visual tokens, and map onto transformers' LlavaNext / LlavaOnevision configs."""

from __future__ import annotations

import re

import pytest
from transformers import LlavaOnevisionConfig

from conftest import CONFIGS
from llavakit.interop.transformers_next import transformers_config_from_llavakit_next
from llavakit.model.build import load_model_spec, model_config

SPECS = CONFIGS / "models"


def _load(name: str):
    return model_config(load_model_spec(SPECS / f"{name}.yaml"))


def _weights(name: str) -> dict[str, str]:
    """The published weights a spec's `# Weights: vision NAME, language NAME` comment names."""
    found = re.search(r"^# Weights: vision (\S+), language (\S+)$", (SPECS / f"{name}.yaml").read_text(), re.M)
    return {"vision": found[1], "language": found[2]} if found else {}


def test_every_spec_loads_and_names_its_weights():
    names = sorted(path.stem for path in SPECS.glob("*.yaml"))
    assert {
        "llava-1.5-hd-13b",
        "llava-next-vicuna-7b",
        "llava-onevision-qwen2-0.5b",
        "llava-onevision-qwen2-7b",
    } <= set(names)
    for name in names:
        spec = load_model_spec(SPECS / f"{name}.yaml")
        assert spec.name == name
        if name.startswith("tiny-"):  # random backbones for tests and smoke runs: no published weights
            assert spec.tokenizer == "tiny" and spec.image_token_id is None
            continue
        assert _weights(name).get("vision") and _weights(name).get("language")
        _load(name)


def test_llava_next_counts():
    config = _load("llava-next-vicuna-7b")
    assert config.image_token_count((672, 672)) == 576 + 48 * 49  # base + 2x2 crops with 48 row ends
    assert config.image_token_count((336, 1008)) == 576 + 24 * 73
    assert config.num_image_tokens == 576 and config.text_config.hidden_size == 4096
    assert transformers_config_from_llavakit_next(config).model_type == "llava_next"


def test_llava_hd_counts():
    config = _load("llava-1.5-hd-13b")
    assert config.crop_size == 224 and max(h * w for h, w in config.grid_pinpoints) == 672 * 448
    assert config.image_token_count((448, 448)) == 32 * 33 + 256  # 2x2 cells, row ends, global last
    assert config.image_token_count((672, 448)) == 48 * 33 + 256  # 3x2, the largest grid
    assert not config.base_first and config.text_config.hidden_size == 5120


@pytest.mark.parametrize("size, hidden, layers", [("0.5b", 896, 24), ("7b", 3584, 28)])
def test_onevision_counts_and_shapes(size, hidden, layers):
    config = _load(f"llava-onevision-qwen2-{size}")
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (hidden, layers)
    assert config.image_token_count((384, 384)) == 729 + 27 * 28  # one crop: no reduction
    assert config.image_token_count((384, 384), base_only=True) == 730  # multi-image: base + newline
    assert config.video_token_count(32) == 32 * 196 + 1  # 27x27 pooled to 14x14 per frame
    big = config.image_token_count((2304, 2304))  # 6x6 crops of 27x27, reduced to about 9 crops
    assert big < 729 + 9 * 729 * 1.1 + 100
    exported = transformers_config_from_llavakit_next(config)
    assert exported.model_type == "llava_onevision" and exported.vision_aspect_ratio == "anyres_max_9"
    defaults = LlavaOnevisionConfig().vision_config  # transformers' defaults are OneVision's SigLIP
    for field in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
    ):
        assert getattr(config.vision_config, field) == getattr(defaults, field), field
    assert exported.image_grid_pinpoints == LlavaOnevisionConfig().image_grid_pinpoints


def test_bad_specs_raise(tmp_path):
    (tmp_path / "typo.yaml").write_text("image_mod: hd\nvision: {model_type: clip_vision_model}\n")
    with pytest.raises(ValueError, match="image_mod"):
        load_model_spec(tmp_path / "typo.yaml")
    (tmp_path / "extra.yaml").write_text("weights: x\nvision: {}\n")
    with pytest.raises(ValueError, match="unknown config key 'weights'"):
        load_model_spec(tmp_path / "extra.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        load_model_spec(tmp_path / "missing.yaml")
    (tmp_path / "shapeless.yaml").write_text(
        "vision: {hidden_size: 8}\nlanguage: {model_type: llama}\nimage_token_id: 1\n"
    )
    with pytest.raises(ValueError, match="model_type"):
        model_config(load_model_spec(tmp_path / "shapeless.yaml", ["image_token_id=1"]))
