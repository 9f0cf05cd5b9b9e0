"""LLaVA-1.5-HD in the model, against the rule as written: grids chosen by hand for a set of sizes,
every cell encoded on its own (in one batched call), the cells' features merged into one map, the
padding's features removed, one row-end token after every row, the whole image's features last."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_llava_config

CELL, SIDE = 32, 4  # tiny CLIP: 32-pixel cells, 8-pixel patches -> 4x4 features per cell

# (height, width) -> (rows, cols, padding columns dropped per side, padding rows dropped per side),
# worked out by hand from the rule: the grid (at most 6 cells) whose fitted image keeps the most
# pixels (capped at the original), then the one wasting the least canvas; then the unpadding.
HAND_COMPUTED = {
    (32, 80): (1, 3, 1, 0),  # 1x3 keeps all 2560 pixels (1x2 only 64x25); map 4x12, image 10 columns wide
    (80, 32): (3, 1, 0, 1),  # the transpose
    (64, 64): (2, 2, 0, 0),  # 2x2 keeps all 4096 pixels with no waste
    (20, 200): (1, 6, 0, 1),  # 1x6 keeps 192x19; map 4x24, image 2 rows high
    (32, 32): (1, 1, 0, 0),
    # 2x3 keeps all 6000 pixels (2x2 only 64x38); map 8x12, the image int(60*12/100) = 7 rows high:
    # (8 - 7) // 2 = 0 rows dropped per side (an odd leftover stays, as transformers does)
    (60, 100): (2, 3, 0, 0),
    (100, 60): (3, 2, 0, 0),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hd(tiny_tokenizer):
    config = tiny_llava_config(tiny_tokenizer.convert_tokens_to_ids("<image>"), image_mode="hd")
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    return model, LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")


def _image(size) -> Image.Image:
    return Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8))


def test_hd_defaults_are_the_paper_layout(hd):
    model, _ = hd
    config = model.config
    assert config.newline_in_images and not config.base_first and not config.base_only_for_multi_image
    assert max(h * w for h, w in config.grid_pinpoints) == 6 * CELL * CELL
    assert len(config.grid_pinpoints) == 14  # 1x1..1x6, 2x1..2x3, 3x1, 3x2, 4x1, 5x1, 6x1


@pytest.mark.parametrize("size", sorted(HAND_COMPUTED))
def test_hd_features_follow_the_rule(hd, size):
    model, processor = hd
    rows, cols, drop_cols, drop_rows = HAND_COMPUTED[size]
    batch = processor("<image>", images=_image(size))
    assert batch["image_num_crops"].tolist() == [1 + rows * cols]

    calls = []
    hook = model.vision_tower.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    with torch.no_grad():
        (features,) = model.get_anyres_image_features(
            batch["pixel_values"], batch["image_sizes"], batch["image_num_crops"]
        )
        hook.remove()
        # By hand: each cell alone through the tower and connector, stitched into one map.
        alone = [model.multi_modal_projector(model.vision_tower(crop[None]))[0] for crop in batch["pixel_values"]]
    assert calls[0] == 1 + rows * cols  # the global image and every cell in one batched call
    global_features, cells = alone[0], alone[1:]
    cell_maps = [cell.reshape(SIDE, SIDE, -1) for cell in cells]
    grid = torch.cat([torch.cat(cell_maps[r * cols : (r + 1) * cols], dim=1) for r in range(rows)], dim=0)
    height, width = grid.shape[:2]
    kept = grid[drop_rows : height - drop_rows, drop_cols : width - drop_cols]
    newline = model.image_newline
    expected = [torch.cat((row, newline[None]), dim=0) for row in kept]  # one row-end token per row
    expected = torch.cat(expected + [global_features])  # the whole image's features last

    assert features.shape[0] == kept.shape[0] * (kept.shape[1] + 1) + SIDE * SIDE
    assert (
        features.shape[0]
        == model.config.image_token_count(size)
        == int((batch["input_ids"] == model.config.image_token_id).sum())
    )
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    row_ends = torch.arange(kept.shape[0]) * (kept.shape[1] + 1) + kept.shape[1]
    assert torch.equal(features[row_ends], newline.expand(len(row_ends), -1))


def test_hd_padding_features_are_gone(hd):
    """A 32x80 image in a 32x96 canvas: the first and last feature columns saw only black padding."""
    model, processor = hd
    image = np.full((32, 80, 3), 200, dtype=np.uint8)
    batch = processor("<image>", images=Image.fromarray(image))
    with torch.no_grad():
        (features,) = model.get_anyres_image_features(
            batch["pixel_values"], batch["image_sizes"], batch["image_num_crops"]
        )
        black = torch.tensor(np.zeros((8, 8, 3), dtype=np.uint8))  # a patch of pure padding, normalised
    pixels = batch["pixel_values"]
    # The canvas pads 8 columns each side: exactly the first patch column of cell 1 and last of cell 3.
    padding_value = (
        (0.0 - torch.tensor(processor.image_config.mean)) / torch.tensor(processor.image_config.std)
    ).float()
    assert torch.allclose(pixels[1, :, :, :8], padding_value[:, None, None].expand(3, 32, 8))
    assert torch.allclose(pixels[3, :, :, -8:], padding_value[:, None, None].expand(3, 32, 8))
    assert not torch.allclose(pixels[1, :, :, 8:16], padding_value[:, None, None].expand(3, 32, 8))
    assert features.shape[0] == 4 * (10 + 1) + 16 and black.shape == (8, 8, 3)


def test_hd_multi_image_gives_every_image_its_grid(hd):
    model, processor = hd
    sizes = [(32, 80), (64, 64)]
    batch = processor("<image> <image>", images=[_image(s) for s in sizes])
    assert batch["image_num_crops"].tolist() == [4, 5]
    with torch.no_grad():
        model(**batch)  # raises if the counts disagree
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == sum(
        model.config.image_token_count(s) for s in sizes
    )


def test_model_rejects_crops_that_do_not_fit_the_grid(hd):
    model, processor = hd
    batch = processor("<image>", images=_image((32, 80)))
    with pytest.raises(ValueError, match="crops"):
        model.get_anyres_image_features(batch["pixel_values"][:3], batch["image_sizes"], [3])
    with pytest.raises(ValueError, match="image_sizes"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])


def test_generate_with_cache_equals_stepwise_full_forwards(tiny_tokenizer):
    """Pixel inputs reach the prefill only; every later step reuses the cache (image_sizes,
    image_num_crops and video_num_frames ride along harmlessly)."""
    config = tiny_llava_config(
        tiny_tokenizer.convert_tokens_to_ids("<image>"),
        vision="siglip",
        text="qwen2",
        vision_feature_select_strategy="full",
        image_mode="anyres_max_2",
        video_token_id=tiny_tokenizer.convert_tokens_to_ids("<video>"),
    )
    torch.manual_seed(3)
    model = LlavaKitForCausalLM(config).eval()
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "chatml")
    frames = np.random.default_rng(1).integers(0, 256, (2, 30, 30, 3), dtype=np.uint8)
    batch = processor("<image> <video> describe", images=_image((70, 110)), videos=frames)
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
        sequence = batch["input_ids"]
        visual = {key: batch[key] for key in batch if key not in ("input_ids", "attention_mask")}
        for _ in range(4):
            logits = model(input_ids=sequence, **visual).logits
            sequence = torch.cat((sequence, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(generated, sequence)
