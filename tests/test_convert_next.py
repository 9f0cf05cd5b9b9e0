"""transformers' LlavaNext and LlavaOnevision checkpoints in and out: imported models give the same
logits as transformers (fp32, tiny random models) for single-image, multi-image and video inputs;
exported ones load in transformers and match; `llavakit import` / `export` route the folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
)
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from llavakit.cli import main
from llavakit.interop.processor_export import transformers_llava_next_processor
from llavakit.interop.transformers_next import (
    export_to_transformers_llava_next,
    import_transformers_llava_next,
)
from llavakit.model import anyres
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_llava_config, tiny_text_config, tiny_vision_config

NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(size, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def _ids(tokenizer, token):
    return tokenizer.convert_tokens_to_ids(token)


def _random_newline(model) -> None:
    """transformers may initialise image_newline to zeros-like scales; make it count in the comparison."""
    with torch.no_grad():
        model.model.image_newline.copy_(torch.randn_like(model.model.image_newline))


@pytest.fixture(scope="module")
def hf_next(tiny_tokenizer):
    config = LlavaNextConfig(
        vision_config=tiny_vision_config("clip").to_dict(),
        text_config=tiny_text_config("llama").to_dict(),
        image_token_index=_ids(tiny_tokenizer, "<image>"),
        image_grid_pinpoints=NEXT_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config).eval()
    _random_newline(model)
    return model


@pytest.fixture(scope="module")
def hf_onevision(tiny_tokenizer):
    config = LlavaOnevisionConfig(
        vision_config=tiny_vision_config("siglip").to_dict(),
        text_config=tiny_text_config("qwen2").to_dict(),
        image_token_index=_ids(tiny_tokenizer, "<image>"),
        video_token_index=_ids(tiny_tokenizer, "<video>"),
        image_grid_pinpoints=[list(p) for p in anyres.grid_pinpoints(32)],
        vision_aspect_ratio="anyres_max_2",  # small, so the reduction runs on small images
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(1)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    _random_newline(model)
    return model


def _logits(model, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


# ---------------------------------------------------------------- import: same logits


def test_llava_next_import_matches_transformers(hf_next, tiny_tokenizer):
    ours = import_transformers_llava_next(hf_next)
    assert ours.config.image_mode == "anyres" and ours.config.grid_pinpoints == [tuple(p) for p in NEXT_PINPOINTS]
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, ours.config, "vicuna_v1")
    texts = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image> or <image>? ASSISTANT:"]
    images = [_image((50, 130), 1), _image((90, 40), 2), _image((33, 33), 3)]
    batch = processor(texts, images=images)
    ref = _logits(hf_next, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"])  # fmt: skip
    torch.testing.assert_close(_logits(ours, **batch), ref, atol=ATOL, rtol=0)
    # transformers' own padded (images, crops, 3, S, S) layout drives our model too.
    hf_processor = transformers_llava_next_processor(
        processor, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1
    )
    hf_batch = hf_processor(text=texts, images=images, return_tensors="pt", padding=True)
    assert hf_batch["pixel_values"].dim() == 5
    torch.testing.assert_close(_logits(ours, **hf_batch), _logits(hf_next, **hf_batch), atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(ours, **hf_batch), ref, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def onevision(hf_onevision, tiny_tokenizer):
    ours = import_transformers_llava_next(hf_onevision)
    return ours, LlavaKitProcessor.from_model_config(tiny_tokenizer, ours.config, "chatml")


def test_onevision_import_single_image(hf_onevision, onevision):
    ours, processor = onevision
    assert ours.config.image_mode == "anyres_max_2" and ours.config.base_only_for_multi_image
    image = _image((110, 170), 4)  # a 4x6 grid of crops: 16x24 features, reduced to fit 2 crops
    batch = processor("<|im_start|>user\n<image>\nDescribe.<|im_end|>", images=image)
    assert int((batch["input_ids"] == ours.config.image_token_id).sum()) < 16 + 16 * 25
    ref = _logits(
        hf_onevision, input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]
    )
    torch.testing.assert_close(_logits(ours, **batch), ref, atol=ATOL, rtol=0)


def test_onevision_import_multi_image(hf_onevision, onevision):
    ours, processor = onevision
    images = [_image((110, 170), 5), _image((40, 90), 6), _image((64, 64), 7)]
    batch = processor("<image> <image>\n<image> Which differs?", images=[images])
    ref = _logits(
        hf_onevision,
        input_ids=batch["input_ids"],
        pixel_values=batch["pixel_values"],
        image_sizes=batch["image_sizes"],
        batch_num_images=torch.tensor([3]),
    )
    torch.testing.assert_close(_logits(ours, **batch), ref, atol=ATOL, rtol=0)


def test_onevision_import_video(hf_onevision, onevision):
    ours, processor = onevision
    frames = np.random.default_rng(8).integers(0, 256, (5, 36, 48, 3), dtype=np.uint8)
    batch = processor("<video>\nWhat happens?", videos=frames)
    ref = _logits(hf_onevision, input_ids=batch["input_ids"], pixel_values_videos=batch["pixel_values_videos"][None])
    torch.testing.assert_close(_logits(ours, **batch), ref, atol=ATOL, rtol=0)


def test_onevision_import_image_and_video_in_one_prompt(hf_onevision, onevision):
    ours, processor = onevision
    frames = np.random.default_rng(9).integers(0, 256, (2, 30, 30, 3), dtype=np.uint8)
    batch = processor("<image> then <video>", images=_image((70, 50), 9), videos=frames)
    ref = _logits(
        hf_onevision,
        input_ids=batch["input_ids"],
        pixel_values=batch["pixel_values"],
        image_sizes=batch["image_sizes"],
        pixel_values_videos=batch["pixel_values_videos"][None],
    )
    torch.testing.assert_close(_logits(ours, **batch), ref, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- export: loads in transformers and matches


def _llavakit_model(tiny_tokenizer, **fields) -> LlavaKitForCausalLM:
    torch.manual_seed(2)
    return LlavaKitForCausalLM(tiny_llava_config(_ids(tiny_tokenizer, "<image>"), **fields)).eval()


@pytest.mark.parametrize(
    "fields, model_type",
    [
        ({"image_mode": "anyres"}, "llava_next"),
        ({"image_mode": "hd", "image_base_first": True}, "llava_next"),
        (
            {
                "image_mode": "anyres_max_3",
                "vision": "siglip",
                "text": "qwen2",
                "vision_feature_select_strategy": "full",
            },
            "llava_onevision",
        ),
    ],
)
def test_export_loads_in_transformers_and_matches(tiny_tokenizer, tmp_path, fields, model_type):
    if model_type == "llava_onevision":
        fields = {**fields, "video_token_id": _ids(tiny_tokenizer, "<video>")}
    ours = _llavakit_model(tiny_tokenizer, **fields)
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, ours.config, "vicuna_v1")
    exported = export_to_transformers_llava_next(ours)
    assert exported.config.model_type == model_type
    exported.save_pretrained(tmp_path)
    cls = LlavaNextForConditionalGeneration if model_type == "llava_next" else LlavaOnevisionForConditionalGeneration
    reloaded = cls.from_pretrained(tmp_path).eval()
    batch = processor("USER: <image>\nhi ASSISTANT:", images=_image((45, 120), 10))
    hf_inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    expected = _logits(ours, **batch)
    torch.testing.assert_close(_logits(exported, **hf_inputs), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(reloaded, **hf_inputs), expected, atol=ATOL, rtol=0)


def test_export_refuses_what_transformers_cannot_represent(tiny_tokenizer):
    with pytest.raises(ValueError, match="base image features after the crops"):
        export_to_transformers_llava_next(_llavakit_model(tiny_tokenizer, image_mode="hd"))
    with pytest.raises(ValueError, match="connector 'linear'"):
        export_to_transformers_llava_next(_llavakit_model(tiny_tokenizer, image_mode="anyres", connector="linear"))
    with pytest.raises(ValueError, match="no video_token_id"):
        export_to_transformers_llava_next(
            _llavakit_model(
                tiny_tokenizer, image_mode="anyres_max_9", vision="siglip", vision_feature_select_strategy="full"
            )
        )
    with pytest.raises(ValueError, match="fixed-resolution models export"):
        export_to_transformers_llava_next(_llavakit_model(tiny_tokenizer))


# ---------------------------------------------------------------- folders through the command


def _save_transformers_folder(model, tokenizer, image_processor, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


def test_cli_round_trip_llava_next(hf_next, tiny_tokenizer, tmp_path):
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=NEXT_PINPOINTS
    )
    source = _save_transformers_folder(hf_next, tiny_tokenizer, image_processor, tmp_path / "hf")
    assert main(["import", str(source), str(tmp_path / "kit")]) == 0
    ours = LlavaKitForCausalLM.from_pretrained(tmp_path / "kit").eval()
    processor = LlavaKitProcessor.from_pretrained(tmp_path / "kit")
    batch = processor("USER: <image>\nhi ASSISTANT:", images=_image((70, 20), 11))
    expected = _logits(
        hf_next, input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]
    )
    torch.testing.assert_close(_logits(ours, **batch), expected, atol=ATOL, rtol=0)

    assert main(["export", str(tmp_path / "kit"), str(tmp_path / "out")]) == 0
    hf_processor = LlavaNextProcessor.from_pretrained(tmp_path / "out")
    hf_batch = hf_processor(text="USER: <image>\nhi ASSISTANT:", images=_image((70, 20), 11), return_tensors="pt")
    assert hf_batch["input_ids"].tolist() == batch["input_ids"].tolist()
    reloaded = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(_logits(reloaded, **hf_batch), expected, atol=ATOL, rtol=0)


def test_cli_round_trip_llava_onevision(hf_onevision, tiny_tokenizer, tmp_path):
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32},
        image_grid_pinpoints=hf_onevision.config.image_grid_pinpoints,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    source = _save_transformers_folder(hf_onevision, tiny_tokenizer, image_processor, tmp_path / "hf")
    assert main(["import", str(source), str(tmp_path / "kit")]) == 0
    ours = LlavaKitForCausalLM.from_pretrained(tmp_path / "kit").eval()
    processor = LlavaKitProcessor.from_pretrained(tmp_path / "kit")
    assert processor.template_name == "chatml" and processor.video is not None
    frames = np.random.default_rng(12).integers(0, 256, (3, 30, 40, 3), dtype=np.uint8)
    batch = processor("<image> and <video>", images=_image((100, 60), 12), videos=frames)
    expected = _logits(
        hf_onevision,
        input_ids=batch["input_ids"],
        pixel_values=batch["pixel_values"],
        image_sizes=batch["image_sizes"],
        pixel_values_videos=batch["pixel_values_videos"][None],
    )
    torch.testing.assert_close(_logits(ours, **batch), expected, atol=ATOL, rtol=0)

    assert main(["export", str(tmp_path / "kit"), str(tmp_path / "out")]) == 0
    reloaded = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    hf_inputs = {key: batch[key] for key in ("input_ids", "pixel_values", "image_sizes")}
    hf_inputs["pixel_values_videos"] = batch["pixel_values_videos"][None]
    torch.testing.assert_close(_logits(reloaded, **hf_inputs), expected, atol=ATOL, rtol=0)
    # The image processor and tokenizer load without llavakit and give the same pixels and ids.
    exported_images = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(exported_images, LlavaOnevisionImageProcessorPil)
    pixels = exported_images(_image((100, 60), 12), return_tensors="pt")["pixel_values"][0]
    assert torch.equal(pixels, batch["pixel_values"])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer("<image> and <video>")["input_ids"] == tiny_tokenizer("<image> and <video>")["input_ids"]
    config = json.loads((tmp_path / "out" / "processor_config.json").read_text())
    assert config["processor_class"] == "LlavaOnevisionProcessor"
    assert config["num_image_tokens"] == 16 and config["vision_aspect_ratio"] == "anyres_max_2"
    assert config["video_processor"]["size"] == {"height": 32, "width": 32}


def test_import_rejects_mismatched_pinpoints(hf_next, tiny_tokenizer, tmp_path, capsys):
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=[[64, 64]]
    )
    source = _save_transformers_folder(hf_next, tiny_tokenizer, image_processor, tmp_path / "hf")
    assert main(["import", str(source), str(tmp_path / "kit")]) == 2
    assert "image_grid_pinpoints [(64, 64)] differ" in capsys.readouterr().err
