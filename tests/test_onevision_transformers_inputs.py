"""transformers' own OneVision inputs drive `LlavaKitForCausalLM`: a batch from transformers'
`LlavaOnevisionProcessor` (padded `(images, max crops, 3, S, S)` pixel values, `image_sizes` and
`batch_num_images`) gives the same ids, logits and greedy tokens as the same samples from llavakit's
processor (flat pixel values and `image_num_crops`). Multi-image samples are encoded at base
resolution only, single-image samples keep their AnyRes grid, as transformers' LlavaOnevisionModel does.

transformers' processor is built from the files `save_onevision_processor` exports, with the PIL image
processor; its torchvision video processor is left out (images only), so no torchvision is needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, LlavaOnevisionProcessor
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from llavakit.interop.processor_export import save_onevision_processor
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_llava_config

ATOL = 1e-5
BATCH_TEXTS = [
    "<|im_start|>user\n<image> <image>\nWhich one is larger?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n<image>\nDescribe it.<|im_end|>\n<|im_start|>assistant\n",
]
MULTI_TEXT = "<|im_start|>user\n<image> then <image>\nand <image>: which differs?<|im_end|>\n<|im_start|>assistant\n"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
    """transformers' `LlavaOnevisionProcessor` with its image processor and tokenizer only.

    Its video processor needs torchvision; images never reach it, so leaving it out keeps
    transformers' own token expansion and pixel layout for images.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, **kwargs)


def _image(size: tuple[int, int], seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def _onevision_config(tokenizer, **fields):
    """A tiny OneVision model: SigLIP + Qwen2, `anyres_max_2` (small, so the reduction runs on small images)."""
    fields = {"image_mode": "anyres_max_2", "multi_image_base_only": True, **fields}
    return tiny_llava_config(
        tokenizer.convert_tokens_to_ids("<image>"),
        vision="siglip",
        text="qwen2",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        **fields,
    )


def _transformers_processor(folder: Path) -> LlavaOnevisionProcessor:
    """transformers' processor read back from an exported folder: its processor_config.json and tokenizer."""
    config = json.loads((folder / "processor_config.json").read_text())
    return ImageOnlyOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil.from_dict(config["image_processor"]),
        tokenizer=AutoTokenizer.from_pretrained(folder),
        num_image_tokens=config["num_image_tokens"],
        vision_feature_select_strategy=config["vision_feature_select_strategy"],
        vision_aspect_ratio=config["vision_aspect_ratio"],
        image_token=config["image_token"],
        video_token=config["video_token"],
        chat_template=(folder / "chat_template.jinja").read_text(),
    )


@pytest.fixture(scope="module")
def onevision(tiny_tokenizer, tmp_path_factory):
    """(model, llavakit processor, transformers processor from the exported processor files)."""
    config = _onevision_config(tiny_tokenizer)
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "chatml")
    folder = tmp_path_factory.mktemp("onevision_processor")
    save_onevision_processor(processor, config, folder)
    return model, processor, _transformers_processor(folder)


def _batch_images() -> list[list[Image.Image]]:
    """Sample 0: two images of different sizes; sample 1: one non-square image (a 3x2 grid)."""
    return [[_image((70, 110), 1), _image((40, 90), 2)], [_image((100, 60), 3)]]


def _multi_images() -> list[list[Image.Image]]:
    return [[_image((110, 170), 4), _image((40, 90), 5), _image((64, 64), 6)]]


def _both_inputs(onevision, texts, images) -> tuple[BatchFeature, BatchFeature]:
    _, processor, hf_processor = onevision
    ours = processor(texts, images=images)
    theirs = hf_processor(text=texts, images=images, return_tensors="pt", padding=True)
    return ours, theirs


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _assert_same_layout(ours: BatchFeature, theirs: BatchFeature, per_sample: list[int]) -> None:
    """Same ids and sizes; transformers' padded rows hold, per image, exactly llavakit's crops first."""
    assert theirs["pixel_values"].dim() == 5 and ours["pixel_values"].dim() == 4
    assert theirs["batch_num_images"].tolist() == per_sample
    assert torch.equal(theirs["input_ids"], ours["input_ids"])
    assert torch.equal(theirs["attention_mask"], ours["attention_mask"])
    assert torch.equal(theirs["image_sizes"], ours["image_sizes"])
    counts = ours["image_num_crops"].tolist()
    leading = torch.cat([crops[:count] for crops, count in zip(theirs["pixel_values"], counts)])
    torch.testing.assert_close(leading, ours["pixel_values"], atol=1e-6, rtol=0)


def test_batch_of_multi_and_single_image_samples_gives_same_logits(onevision):
    model, _, _ = onevision
    ours, theirs = _both_inputs(onevision, BATCH_TEXTS, _batch_images())
    _assert_same_layout(ours, theirs, [2, 1])
    counts = ours["image_num_crops"].tolist()
    assert counts[:2] == [1, 1] and counts[2] > 1  # the multi-image sample at base resolution, the single one gridded
    assert theirs["pixel_values"].shape[1] == counts[2]  # padded to the single image's crops
    base_only_tokens = model.config.image_token_count(base_only=True)
    assert int((ours["input_ids"][0] == model.config.image_token_id).sum()) == 2 * base_only_tokens
    expected = _logits(model, ours)
    torch.testing.assert_close(_logits(model, theirs), expected, atol=ATOL, rtol=0)
    # llavakit's own inputs with transformers' batch_num_images beside them read the same way.
    torch.testing.assert_close(
        _logits(model, {**ours, "batch_num_images": theirs["batch_num_images"]}), expected, atol=ATOL, rtol=0
    )


def test_single_multi_image_sample_gives_same_logits(onevision):
    model, _, _ = onevision
    ours, theirs = _both_inputs(onevision, [MULTI_TEXT], _multi_images())
    _assert_same_layout(ours, theirs, [3])
    assert ours["image_num_crops"].tolist() == [1, 1, 1] and theirs["pixel_values"].shape[1] == 1
    torch.testing.assert_close(_logits(model, theirs), _logits(model, ours), atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["batch", "multi_image"])
def test_generate_gives_same_greedy_tokens(onevision, case):
    model, _, _ = onevision
    texts, images = (BATCH_TEXTS, _batch_images()) if case == "batch" else ([MULTI_TEXT], _multi_images())
    ours, theirs = _both_inputs(onevision, texts, images)
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        from_ours = model.generate(**ours, **settings)
        from_theirs = model.generate(**theirs, **settings)
    assert from_ours.shape[1] == ours["input_ids"].shape[1] + 5
    assert torch.equal(from_theirs, from_ours)


def test_mismatched_batch_num_images_is_refused(onevision):
    model, _, _ = onevision
    ours, theirs = _both_inputs(onevision, BATCH_TEXTS, _batch_images())
    with pytest.raises(ValueError, match=r"batch_num_images \[2, 2\] counts 4 image\(s\), but 3 image\(s\) were given"):
        model(**{**theirs, "batch_num_images": torch.tensor([2, 2])})
    with pytest.raises(ValueError, match=r"counts 2 image\(s\), but 3 image\(s\) were given"):
        model(**{**ours, "batch_num_images": [2]})
    # Three one-image samples would give every image its grid, which llavakit's crop counts contradict.
    with pytest.raises(ValueError, match=r"image_num_crops \[1, 1, \d+\] disagree with batch_num_images \[1, 1, 1\]"):
        model(**{**ours, "batch_num_images": [1, 1, 1]})


def test_multi_image_samples_keep_grids_when_the_config_says_so(tiny_tokenizer):
    config = _onevision_config(tiny_tokenizer, multi_image_base_only=False)
    torch.manual_seed(1)
    model = LlavaKitForCausalLM(config).eval()
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "chatml")
    batch = processor(BATCH_TEXTS, images=_batch_images())
    assert all(count > 1 for count in batch["image_num_crops"].tolist())
    expected = _logits(model, batch)
    # transformers' padded layout of the same crops, with batch_num_images: every image keeps its grid.
    counts = batch["image_num_crops"].tolist()
    padded = torch.zeros(len(counts), max(counts), *batch["pixel_values"].shape[1:])
    for row, crops in zip(padded, batch["pixel_values"].split(counts)):
        row[: len(crops)] = crops
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "image_sizes")}
    padded_inputs = {**inputs, "pixel_values": padded, "batch_num_images": torch.tensor([2, 1])}
    torch.testing.assert_close(_logits(model, padded_inputs), expected, atol=ATOL, rtol=0)


def test_fixed_mode_checks_batch_num_images_too(tiny_tokenizer):
    config = tiny_llava_config(tiny_tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(2)
    model = LlavaKitForCausalLM(config).eval()
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")
    batch = processor(["USER: <image> <image> ASSISTANT:"], images=[[_image((30, 50), 7), _image((50, 30), 8)]])
    expected = _logits(model, batch)
    torch.testing.assert_close(_logits(model, {**batch, "batch_num_images": [2]}), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"batch_num_images \[1\] counts 1 image\(s\), but 2 image\(s\) were given"):
        model(**{**batch, "batch_num_images": [1]})
