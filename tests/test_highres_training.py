"""Training batches in the grid and video modes: padding and packing join every sample's crops,
sizes, crop counts, frames and frame counts in the order of its placeholders, so a batch gives
each sample exactly the loss it has alone, and packing gives the padded batch's mean loss.

Four tiny models: LLaVA-NeXT AnyRes, LLaVA-1.5-HD, OneVision multi-image (base resolution per
image of a multi-image sample) and OneVision with video. Each batch has three samples whose
images (and videos) differ in size, so their token counts differ and a misplaced feature
would either fail the model's count check or change a loss.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import conversation
from llavakit.data.batching import PackingCollator, PaddingCollator, first_fit
from llavakit.data.dataset import LlavaDataset
from llavakit.data.records import DatasetSpec
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import IGNORE_INDEX, LlavaKitProcessor
from llavakit.processing.video import FrameSampling
from llavakit.tiny import tiny_llava_config

Size = tuple[int, int]

# mode -> samples, each (question, answer, image sizes (height, width), video frame counts)
SAMPLES = {
    "anyres": [
        ("<image>\nWhat is in the picture?", "A wide noisy picture.", [(30, 70)], []),
        ("<image>\nDescribe the image in detail.", "Noise, taller than wide, all over.", [(64, 40)], []),
        ("<image>\nWhat color?", "Gray.", [(25, 25)], []),
    ],
    "hd": [
        ("<image>\nWhat is in the picture?", "A wide noisy picture.", [(32, 80)], []),
        ("<image>\nDescribe the image in detail.", "Noise from the left to the right.", [(60, 100)], []),
        ("<image>\nWhat color?", "Gray.", [(64, 64)], []),
    ],
    "multi_image": [
        ("<image>\n<image>\nCompare the two images.", "The first is wider.", [(40, 90), (70, 30)], []),
        ("<image>\nDescribe the image in detail.", "A square of noise, all gray.", [(50, 50)], []),
        ("<image> <image> <image>\nWhich is the tallest?", "The third.", [(20, 20), (30, 60), (90, 40)], []),
    ],
    "video": [
        ("<video>\nWhat happens in the video?", "The noise changes.", [], [2]),
        ("<image>\n<video>\nDoes the video show this picture?", "Yes, in every frame.", [(40, 90)], [3]),
        ("<image>\nWhat color?", "Gray.", [(60, 30)], []),
    ],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tokenizer, mode: str):
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    if mode in ("anyres", "hd"):
        return tiny_llava_config(image_token, image_mode=mode), "vicuna_v1"
    onevision = dict(vision="siglip", text="qwen2", vision_feature_select_strategy="full", image_mode="anyres_max_2")
    if mode == "video":
        onevision["video_token_id"] = tokenizer.convert_tokens_to_ids("<video>")
    return tiny_llava_config(image_token, **onevision), "chatml"


def _pixels(rng: np.random.Generator, size: Size, frames: int | None = None) -> np.ndarray:
    shape = (*size, 3) if frames is None else (frames, *size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _items(processor: LlavaKitProcessor, mode: str) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for index, (question, answer, sizes, frames) in enumerate(SAMPLES[mode]):
        images = [_pixels(rng, size) for size in sizes]
        videos = [_pixels(rng, (24 + 8 * k, 40), count) for k, count in enumerate(frames)]
        encoded = processor.encode_conversation(
            conversation(question, answer), images=images, videos=videos, sample_id=index
        )
        items.append({**encoded, "sample_id": f"{mode}-{index}"})
    return _middle_longest(items)


def _middle_longest(items: list[dict]) -> list[dict]:
    """Order the items (medium, longest, shortest): first-fit into rows of longest + shortest
    then packs rows [[0, 2], [1]], so packing really puts samples in another order than given."""
    by_length = sorted(items, key=lambda item: len(item["input_ids"]))
    return [by_length[1], by_length[2], by_length[0]]


@pytest.fixture(scope="module", params=sorted(SAMPLES))
def case(request, tiny_tokenizer):
    config, template = _config(tiny_tokenizer, request.param)
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, template)
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    return model, _items(processor, request.param), tiny_tokenizer.pad_token_id


def _inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "skipped_samples"}


def _row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of every row, over its labelled tokens (as the model's loss for one row)."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    counted = targets != IGNORE_INDEX
    return (losses * counted).sum(1) / counted.sum(1)


def _visual_tokens(model: LlavaKitForCausalLM, item: dict) -> int:
    ids = item["input_ids"]
    video = model.config.video_token_id
    return int((ids == model.config.image_token_id).sum()) + (int((ids == video).sum()) if video is not None else 0)


def test_samples_differ_in_visual_tokens(case):
    model, items, _ = case
    assert len({_visual_tokens(model, item) for item in items}) == 3


def test_padded_batch_gives_every_sample_its_own_loss(case):
    model, items, pad = case
    collate = PaddingCollator(pad_token_id=pad)
    batch = collate(items)
    with torch.no_grad():
        in_batch = _row_losses(model(**_inputs(batch)).logits, batch["labels"])
        alone = torch.stack([model(**_inputs(collate([item]))).loss for item in items])
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=0)


def test_packed_batch_gives_the_padded_mean_loss(case):
    model, items, pad = case
    lengths = [len(item["input_ids"]) for item in items]
    capacity = max(lengths) + min(lengths)
    assert first_fit(lengths, capacity) == [[0, 2], [1]]  # the third sample's visuals come before the second's
    packed = PackingCollator(max_length=capacity, pad_token_id=pad)(items)
    padded = PaddingCollator(pad_token_id=pad)(items)
    assert packed["input_ids"].shape[0] == 2
    with torch.no_grad():
        packed_loss, padded_loss = model(**_inputs(packed)).loss, model(**_inputs(padded)).loss
    assert torch.isfinite(padded_loss)
    assert abs(packed_loss.item() - padded_loss.item()) < 1e-5


def test_training_step_reaches_every_trained_part(case):
    model, items, pad = case
    batch = PaddingCollator(pad_token_id=pad)(items)
    model.train()
    try:
        model(**_inputs(batch)).loss.backward()
        grads = {
            "image_newline": model.image_newline.grad,
            "connector": next(model.multi_modal_projector.parameters()).grad,
            "vision tower": model.vision_tower.encoder.get_input_embeddings().weight.grad,
            "language model": model.get_input_embeddings().weight.grad,
        }
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert model.config.has_image_newline
    for part, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, part


def test_dataset_items_batch_and_train_end_to_end(tmp_path, tiny_tokenizer):
    """LLaVA-format records with images and a frame folder, through LlavaDataset and both collators."""
    config, template = _config(tiny_tokenizer, "video")
    processor = LlavaKitProcessor.from_model_config(
        tiny_tokenizer, config, template, video_sampling=FrameSampling(max_frames=3)
    )
    rng = np.random.default_rng(1)
    Image.fromarray(_pixels(rng, (40, 90))).save(tmp_path / "wide.png")
    Image.fromarray(_pixels(rng, (70, 30))).save(tmp_path / "tall.png")
    (tmp_path / "clip").mkdir()
    for index in range(5):
        Image.fromarray(_pixels(rng, (24, 40))).save(tmp_path / "clip" / f"{index}.png")
    records = [
        {"id": "wide", "image": "wide.png", "conversations": conversation("<image>\nWhat is it?", "Noise.")},
        {"id": "clip", "video": "clip", "conversations": conversation("<video>\nWhat happens?", "The noise moves.")},
        {"id": "gone", "video": "gone", "conversations": conversation("<video>\nWhat happens?", "Nothing.")},
        {"id": "two", "image": ["tall.png", "wide.png"], "conversations": conversation("<image><image>\nSame?", "No.")},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset = LlavaDataset([DatasetSpec(tmp_path / "data.json")], processor, None)
    items = [dataset[index] for index in range(len(dataset))]
    padded = PaddingCollator(pad_token_id=tiny_tokenizer.pad_token_id)(items)
    assert padded["skipped_samples"] == [("gone", f"missing video: {tmp_path / 'gone'} does not exist")]
    assert padded["image_num_crops"].tolist() == items[0]["image_num_crops"].tolist() + [1, 1]
    assert padded["video_num_frames"].tolist() == [3]
    capacity = sum(len(item["input_ids"]) for item in items if "input_ids" in item)
    packed = PackingCollator(max_length=capacity, pad_token_id=tiny_tokenizer.pad_token_id)(items)
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config)
    padded_loss = model(**_inputs(padded)).loss
    with torch.no_grad():
        packed_loss = model(**_inputs(packed)).loss
    assert abs(padded_loss.item() - packed_loss.item()) < 1e-5
    padded_loss.backward()
    assert model.image_newline.grad is not None and model.image_newline.grad.abs().sum() > 0
