"""High-resolution preprocessing: llavakit's AnyRes / OneVision crops against transformers' image
processors and processors, and `<image>` expansion equal to the features the model makes, for
many sizes and every mode (tiny geometry: 32-pixel crops of 8-pixel patches, 4x4 feature maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaOnevisionProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from llavakit.interop.processor_export import transformers_llava_next_processor, transformers_llava_processor
from llavakit.model import anyres
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.highres import HighResConfig, anyres_crops, preprocess_highres
from llavakit.processing.images import CLIP_MEAN, CLIP_STD, ImageProcessingConfig
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_llava_config

CROP, PATCH, SIDE = 32, 8, 4
NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
SIZES = [
    (1, 1),
    (7, 300),
    (300, 7),
    (32, 32),
    (33, 65),
    (50, 17),
    (64, 64),
    (100, 150),
    (150, 100),
    (97, 31),
    (240, 320),
]
SIGLIP_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(size, seed=0) -> Image.Image:
    height, width = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _ids(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def _config(tokenizer, mode: str, vision: str = "clip", **fields):
    strategy = "default" if vision == "clip" else "full"
    return tiny_llava_config(
        _ids(tokenizer, "<image>"),
        vision=vision,
        text="qwen2" if vision == "siglip" else "llama",
        vision_feature_select_strategy=strategy,
        image_mode=mode,
        **fields,
    )


def _processor(tokenizer, config, **kwargs) -> LlavaKitProcessor:
    return LlavaKitProcessor.from_model_config(tokenizer, config, "vicuna_v1", **kwargs)


# ---------------------------------------------------------------- pixels against transformers


@pytest.mark.parametrize("size", SIZES)
def test_anyres_pixels_equal_llava_next_image_processor(tiny_tokenizer, size):
    config = _config(tiny_tokenizer, "anyres", image_grid_pinpoints=NEXT_PINPOINTS)
    ours = _processor(tiny_tokenizer, config)("USER: <image>\nhi", images=_image(size), return_tensors="np")
    theirs = LlavaNextImageProcessorPil(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, image_grid_pinpoints=NEXT_PINPOINTS
    )(_image(size), return_tensors="np")
    assert ours["pixel_values"].shape == theirs["pixel_values"][0].shape
    np.testing.assert_array_equal(ours["pixel_values"], theirs["pixel_values"][0])
    np.testing.assert_array_equal(ours["image_sizes"], theirs["image_sizes"])
    assert ours["image_num_crops"].tolist() == [theirs["pixel_values"].shape[1]]


def _onevision_image_processor() -> LlavaOnevisionImageProcessorPil:
    mean, std = SIGLIP_NORM
    return LlavaOnevisionImageProcessorPil(
        size={"height": CROP, "width": CROP},
        image_grid_pinpoints=[list(p) for p in anyres.grid_pinpoints(CROP)],
        image_mean=list(mean),
        image_std=list(std),
    )


@pytest.mark.parametrize("size", SIZES)
def test_onevision_pixels_equal_onevision_image_processor(tiny_tokenizer, size):
    config = _config(tiny_tokenizer, "anyres_max_2", vision="siglip")
    ours = _processor(tiny_tokenizer, config)("<image> what?", images=_image(size), return_tensors="np")
    theirs = _onevision_image_processor()(_image(size), return_tensors="np")
    np.testing.assert_array_equal(ours["pixel_values"], theirs["pixel_values"][0])
    np.testing.assert_array_equal(ours["image_sizes"], theirs["image_sizes"])


def test_onevision_multi_image_is_base_only_and_equals_image_processor(tiny_tokenizer):
    config = _config(tiny_tokenizer, "anyres_max_2", vision="siglip")
    images = [_image((100, 150), 1), _image((20, 90), 2), _image((64, 64), 3)]
    ours = _processor(tiny_tokenizer, config)("<image><image>\n<image> compare", images=[images], return_tensors="np")
    theirs = _onevision_image_processor()([images], return_tensors="np")
    assert theirs["pixel_values"].shape[:2] == (3, 1)
    np.testing.assert_array_equal(ours["pixel_values"], theirs["pixel_values"][:, 0])
    np.testing.assert_array_equal(ours["image_sizes"], theirs["image_sizes"])
    assert ours["image_num_crops"].tolist() == [1, 1, 1]
    # Each base-only image: its 16 features plus one newline.
    assert int((ours["input_ids"] == config.image_token_id).sum()) == 3 * (SIDE * SIDE + 1)


# ---------------------------------------------------------------- token counts against transformers


@pytest.mark.parametrize("mode", ["anyres", "hd"])
def test_input_ids_and_pixels_equal_llava_next_processor(tiny_tokenizer, mode):
    fields = {"image_grid_pinpoints": NEXT_PINPOINTS} if mode == "anyres" else {"image_base_first": True}
    config = _config(tiny_tokenizer, mode, **fields)
    ours = _processor(tiny_tokenizer, config)
    theirs = transformers_llava_next_processor(
        ours, patch_size=PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1
    )
    for index, size in enumerate(SIZES):
        texts = ["USER: <image>\nWhat is here? ASSISTANT:", "<image> and <image> differ?"]
        images = [_image(size, index), _image(SIZES[-1 - index], index), _image((40, 70), index)]
        a = ours(texts, images=images, return_tensors="np")
        b = theirs(text=texts, images=images, return_tensors="np", padding=True)
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_array_equal(a["attention_mask"], b["attention_mask"])
        crops = a["image_num_crops"].tolist()
        for i, count in enumerate(crops):
            np.testing.assert_array_equal(
                a["pixel_values"][sum(crops[:i]) : sum(crops[: i + 1])], b["pixel_values"][i][:count]
            )


def _transformers_onevision_counter(max_crops: int, num_image_tokens: int = SIDE * SIDE) -> LlavaOnevisionProcessor:
    """transformers' OneVision token arithmetic without its torchvision video processor: the
    processor object is created bare and given only what its counting methods read."""
    counter = object.__new__(LlavaOnevisionProcessor)
    counter.image_processor = _onevision_image_processor()
    counter.num_image_tokens = num_image_tokens
    counter.vision_aspect_ratio = f"anyres_max_{max_crops}"
    counter.vision_feature_select_strategy = "full"
    return counter


@pytest.mark.parametrize("max_crops", [1, 2, 9])
def test_image_and_video_token_counts_equal_onevision_processor(tiny_tokenizer, max_crops):
    config = _config(
        tiny_tokenizer, f"anyres_max_{max_crops}", vision="siglip", video_token_id=_ids(tiny_tokenizer, "<video>")
    )
    processor = _processor(tiny_tokenizer, config)
    counter = _transformers_onevision_counter(max_crops)
    image_id, video_id = config.image_token_id, config.video_token_id
    for size in SIZES + [(1000, 3000), (2000, 500)]:
        expected = counter._get_number_of_features(*size, CROP, CROP)
        ids = processor("<image>", images=_image(size), return_tensors="np")["input_ids"]
        assert int((ids == image_id).sum()) == expected == config.image_token_count(size), size
    counted = counter._get_num_multimodal_tokens(video_sizes=[(5, 40, 40)])
    ids = processor("<video>", videos=np.zeros((5, 40, 40, 3), dtype=np.uint8), return_tensors="np")["input_ids"]
    assert int((ids == video_id).sum()) == counted["num_video_tokens"][0] == 5 * 2 * 2 + 1


# ---------------------------------------------------------------- expansion equals the model's features


def _model(config) -> LlavaKitForCausalLM:
    torch.manual_seed(0)
    return LlavaKitForCausalLM(config).eval()


MODES = {
    "fixed+newline": ("fixed", "clip", {"use_image_newline": True}),
    "hd": ("hd", "clip", {}),
    "hd-4-cells": ("hd", "clip", {"hd_max_cells": 4}),
    "anyres": ("anyres", "clip", {}),
    "anyres_max_1": ("anyres_max_1", "siglip", {}),
    "anyres_max_4": ("anyres_max_4", "siglip", {}),
}


@pytest.mark.parametrize("name", sorted(MODES))
def test_expansion_equals_model_features_for_many_sizes(tiny_tokenizer, name):
    mode, vision, fields = MODES[name]
    config = _config(tiny_tokenizer, mode, vision=vision, **fields)
    model, processor = _model(config), _processor(tiny_tokenizer, config)
    sizes = SIZES + [(1000, 3000), (2000, 500), (1, 10000)]
    texts = [f"USER: <image>\nsize {i}" for i in range(len(sizes))] + ["<image> and <image>"]
    images = [_image(size, i) for i, size in enumerate(sizes)] + [_image((90, 40), 7), _image((40, 200), 8)]
    batch = processor(texts, images=images)
    with torch.no_grad():
        if mode == "fixed":
            features = list(model.get_image_features(batch["pixel_values"]))
        else:
            features = model.get_anyres_image_features(
                batch["pixel_values"], batch["image_sizes"], batch["image_num_crops"]
            )
        logits = model(**batch).logits  # the forward checks the placeholder count itself
    per_text = (batch["input_ids"] == config.image_token_id).sum(dim=1).tolist()
    lengths = [len(f) for f in features]
    assert per_text[: len(sizes)] == lengths[: len(sizes)]
    assert per_text[-1] == sum(lengths[len(sizes) :])
    if mode != "fixed":
        assert lengths[: len(sizes)] == [config.image_token_count(size) for size in sizes]
    assert logits.shape[:2] == batch["input_ids"].shape


def test_encode_conversation_expands_like_call(tiny_tokenizer):
    config = _config(tiny_tokenizer, "anyres_max_2", vision="siglip", video_token_id=_ids(tiny_tokenizer, "<video>"))
    processor = _processor(tiny_tokenizer, config)
    video = np.random.default_rng(0).integers(0, 256, (3, 30, 40, 3), dtype=np.uint8)
    conversation = [
        {"from": "human", "value": "<image>\n<video>\nWhat moves?"},
        {"from": "gpt", "value": "The square."},
    ]
    sample = processor.encode_conversation(conversation, images=[_image((100, 150))], videos=[video], sample_id="s1")
    prompt = processor.template.render(conversation).text
    called = processor(prompt, images=_image((100, 150)), videos=video, add_special_tokens=True)
    assert sample["input_ids"].tolist() == called["input_ids"][0].tolist()
    assert torch.equal(sample["pixel_values"], called["pixel_values"])
    assert sample["image_sizes"].tolist() == [[100, 150]] and sample["video_num_frames"].tolist() == [3]
    visual = sample["input_ids"] == config.image_token_id
    assert int(visual.sum()) == config.image_token_count((100, 150))
    assert int((sample["input_ids"] == config.video_token_id).sum()) == config.video_token_count(3)
    labels = sample["labels"]
    assert (labels[visual] == -100).all() and (labels[sample["input_ids"] == config.video_token_id] == -100).all()
    with torch.no_grad():
        _model(config)(
            **{k: v[None] if k in ("input_ids", "labels", "attention_mask") else v for k, v in sample.items()}
        )


def test_fixed_mode_outputs_are_unchanged(tiny_tokenizer):
    config = _config(tiny_tokenizer, "fixed")
    processor = _processor(tiny_tokenizer, config)
    assert processor.highres is None and processor.video is None
    batch = processor("<image> hi", images=_image((50, 80)))
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    sample = processor.encode_conversation(
        [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "yes"}], images=[_image((50, 80))]
    )
    assert set(sample) == {"input_ids", "labels", "attention_mask", "pixel_values"}


# ---------------------------------------------------------------- persistence, backends, errors


def test_save_and_load_keep_the_layout(tiny_tokenizer, tmp_path):
    config = _config(tiny_tokenizer, "anyres_max_2", vision="siglip", video_token_id=_ids(tiny_tokenizer, "<video>"))
    processor = _processor(tiny_tokenizer, config)
    processor.save_pretrained(tmp_path)
    loaded = LlavaKitProcessor.from_pretrained(tmp_path)
    assert loaded.highres == processor.highres and loaded.video == processor.video
    images, video = [_image((70, 130))], np.zeros((2, 20, 20, 3), dtype=np.uint8)
    a, b = (
        processor("<image><video>", images=images, videos=video),
        loaded("<image><video>", images=images, videos=video),
    )
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_torch_resize_backend_is_close_to_pil():
    mean, std = CLIP_MEAN, CLIP_STD
    config = ImageProcessingConfig(mode="pad", size=CROP, mean=mean, std=std)
    pil = HighResConfig("anyres", CROP, PATCH, tuple(map(tuple, NEXT_PINPOINTS)))
    fast = HighResConfig("anyres", CROP, PATCH, tuple(map(tuple, NEXT_PINPOINTS)), resize_backend="torch")
    # A smooth image, as photos are: the two resizes then differ by rounding only.
    y, x = np.mgrid[0:90, 0:140]
    smooth = np.stack([x * 255 / 140, y * 255 / 90, (x + y) * 255 / 230], axis=-1).astype(np.uint8)
    a, b = anyres_crops(smooth, pil, config), anyres_crops(smooth, fast, config)
    assert a.pixel_values.shape == b.pixel_values.shape and a.image_size == b.image_size
    assert np.abs(a.pixel_values - b.pixel_values).max() <= 2 / 255 / min(std) + 1e-6
    with pytest.raises(ValueError, match="torch resize backend"):
        anyres_crops(smooth, fast, ImageProcessingConfig(size=CROP, resample="lanczos"))


def test_bad_inputs_raise_clear_errors(tiny_tokenizer):
    config = _config(tiny_tokenizer, "anyres")
    processor = _processor(tiny_tokenizer, config)
    with pytest.raises(ValueError, match="1 image"):
        processor("<image><image>", images=[_image((10, 10))])
    with pytest.raises(ValueError, match="no video layout"):
        processor("hi", videos=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="crop size"):
        preprocess_highres(_image((10, 10)), processor.highres, ImageProcessingConfig(size=48))
    with pytest.raises(ValueError, match="resize_backend"):
        HighResConfig("anyres", CROP, PATCH, ((32, 64),), resize_backend="cv2")
    with pytest.raises(ValueError, match="no LlavaProcessor form"):
        transformers_llava_processor(processor, PATCH, "default", 1)
    onevision = _processor(tiny_tokenizer, _config(tiny_tokenizer, "anyres_max_2", vision="siglip"))
    with pytest.raises(ValueError, match="only an hd / anyres processor"):
        transformers_llava_next_processor(onevision, PATCH, "full", 0)
