"""AnyRes / OneVision / LLaVA-1.5-HD geometry against transformers' implementations.

Run: .venv/bin/python -m pytest tests/test_anyres.py -q

transformers' own LLaVA-NeXT and OneVision helpers are the reference for grid choice,
resize and pad, crops, unpadding, the anyres_max reduction, feature packing, video pooling
and the processors' token counts; LLaVA-1.5-HD (not in transformers) is checked against
grids and counts worked out by hand below.
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlavaNextProcessor, LlavaOnevisionProcessor
from transformers.image_processing_utils import get_patch_output_size
from transformers.image_processing_utils import (
    select_best_resolution as hf_select_best_resolution,
)
from transformers.image_transforms import divide_to_patches
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next import modeling_llava_next as hf_next
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)
from transformers.models.llava_onevision import modeling_llava_onevision as hf_ov
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from llavakit.model import anyres

NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
OV_PINPOINTS = LlavaOnevisionImageProcessorPil.image_grid_pinpoints  # anyres_max_9's (1x1)..(6x6) of 384
EXTREME_SIZES = [
    (1, 1), (1, 4000), (4000, 1), (2, 3999), (3999, 2), (4000, 4000), (3, 4000), (4000, 7),
    (336, 336), (336, 672), (672, 336), (384, 2304), (2304, 384), (335, 1009), (1, 2), (13, 4000),
    # unpadding NeXT maps of 24 features a crop hits x.999999..., which only the rounding to 7 decimals fixes
    (55, 176), (88, 99), (309, 309), (321, 428), (47, 1128),
]  # fmt: skip


def random_sizes(count: int, seed: int) -> list[tuple[int, int]]:
    """Image sizes from 1x1 to 4000x4000: half uniform, half with aspect ratios up to 1:1000."""
    rng = random.Random(seed)
    sizes = list(EXTREME_SIZES)
    while len(sizes) < count:
        if len(sizes) % 2:
            sizes.append((rng.randint(1, 4000), rng.randint(1, 4000)))
        else:
            long_side = rng.randint(1, 4000)
            short_side = max(1, min(long_side, round(long_side / 10 ** rng.uniform(0, 3))))
            sizes.append((long_side, short_side) if rng.random() < 0.5 else (short_side, long_side))
    return sizes


# --------------------------------------------------------------------------- candidates


@pytest.mark.parametrize("pinpoints", [NEXT_PINPOINTS, OV_PINPOINTS], ids=["next", "onevision"])
def test_select_best_resolution_matches_transformers(pinpoints):
    for size in random_sizes(1000, seed=0):
        assert anyres.select_best_resolution(size, pinpoints) == tuple(hf_select_best_resolution(size, pinpoints)), size


def test_grid_pinpoints_are_onevision_defaults():
    assert anyres.grid_pinpoints(384) == [tuple(p) for p in OV_PINPOINTS]
    assert anyres.parse_grid_pinpoints("(1x1),...,(6x6)", 384) == [tuple(p) for p in OV_PINPOINTS]
    # the grid form names the first and last grids; rows outer, as in the original configs
    assert anyres.parse_grid_pinpoints("(1x2),...,(2x3)", 336) == [(336, 672), (336, 1008), (672, 672), (672, 1008)]
    assert anyres.parse_grid_pinpoints(NEXT_PINPOINTS, 336) == [tuple(p) for p in NEXT_PINPOINTS]
    assert anyres.parse_grid_pinpoints("[(336, 672), (672, 336)]", 336) == [(336, 672), (672, 336)]
    with pytest.raises(ValueError, match="cannot parse"):
        anyres.parse_grid_pinpoints("six by six", 384)
    with pytest.raises(ValueError, match="empty"):
        anyres.parse_grid_pinpoints([], 384)


# --------------------------------------------------------------------------- LLaVA-1.5-HD


def test_hd_grids_are_the_six_cell_grids():
    assert anyres.hd_grids() == [
        (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6),
        (2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (4, 1), (5, 1), (6, 1),
    ]  # fmt: skip
    # no canvas holds more than 672x448 pixels
    assert max(h * w for h, w in anyres.hd_pinpoints(224)) == 672 * 448


# Hand-computed with cells of 224. "eff" is the fitted area min(int(h*s) * int(w*s), h*w),
# s = min(canvas_h / h, canvas_w / w); ties in eff go to the smaller canvas.
HD_CASES = [
    # 224x224: 1x1 fits it exactly (eff 50176, waste 0); larger grids keep eff, waste more.
    ((224, 224), (1, 1)),
    # 100x100 is smaller than a cell: every grid keeps all 10000 pixels, 1x1 wastes least.
    ((100, 100), (1, 1)),
    # 448x448: 2x2 fits exactly (eff 200704); 2x3 also keeps 448x448 but wastes 100352.
    ((448, 448), (2, 2)),
    # 300x300: 1x1 keeps 224^2; 2x2 keeps all 90000 (capped) with the least waste.
    ((300, 300), (2, 2)),
    # 1000x1000: 2x2 keeps 448^2 = 200704; 2x3 / 3x2 are limited by their 448 side too.
    ((1000, 1000), (2, 2)),
    # 300x1000 (h x w): 1x3 s=0.672 -> 201x672 = 135072; 1x4 s=224/300 -> 224x746 = 167104;
    # 1x5, 1x6 keep the same 167104 with more waste; 2x3 s=0.672 -> 135072. So 1x4.
    ((300, 1000), (1, 4)),
    ((1000, 300), (4, 1)),
    # 1000x1500: 2x3 (448x672) s=0.448 on both axes -> 448x672, no waste.
    ((1000, 1500), (2, 3)),
    ((1500, 1000), (3, 2)),
    # 500x700: 2x3 s=min(0.896, 0.96) -> 448x627 = 280896; 2x2 / 3x2 s=0.64 -> 320x448.
    ((500, 700), (2, 3)),
    # 100x2000: 1x6 s=0.672 -> 67x1344 = 90048; 1x5 s=0.56 -> 56x1120; 2x3 s=0.336 -> 33x672.
    ((100, 2000), (1, 6)),
    ((2000, 100), (6, 1)),
    # 224x1344 is exactly six cells in a row.
    ((224, 1344), (1, 6)),
]


@pytest.mark.parametrize(("size", "grid"), HD_CASES)
def test_select_hd_grid_hand_computed(size, grid):
    assert anyres.select_hd_grid(size, cell=224) == grid


def test_hd_token_count_hand_computed():
    # 300x1000 -> grid 1x4 of 16x16 features (224 / 14) -> merged map 16x64.
    # The image is wider than tall but 1000/300 = 3.33 < 64/16 = 4, so columns are padding:
    # new width int(round(1000 * 16/300, 7)) = 53, padding (64 - 53) // 2 = 5 a side -> 16x54.
    # Tokens: 16 rows * (54 + 1 row-end) + 256 global = 1136.
    assert anyres.anyres_feature_shape((300, 1000), anyres.hd_pinpoints(224), 224, 14) == (16, 54)
    assert anyres.num_image_tokens("hd", (300, 1000), crop_size=224, patch_size=14) == 1136
    # 448x448 -> 2x2 grid, no padding: 32 * 33 + 256 = 1312.
    assert anyres.num_image_tokens("hd", (448, 448), crop_size=224, patch_size=14) == 1312
    # without row-end tokens: 32 * 32 + 256
    assert anyres.num_image_tokens("hd", (448, 448), crop_size=224, patch_size=14, newline=False) == 1280


# --------------------------------------------------------------------------- pixels


def test_resize_and_pad_matches_transformers():
    processor = LlavaNextImageProcessorPil()
    rng = random.Random(1)
    for size in random_sizes(300, seed=2):
        target = tuple(rng.choice(NEXT_PINPOINTS + OV_PINPOINTS))
        fit = anyres.resize_and_pad_size(size, target)
        dummy = np.empty((1, *size), dtype=np.uint8)
        new_size = get_patch_output_size(dummy, target, input_data_format=ChannelDimension.FIRST)
        (top, bottom), (left, right) = processor._get_padding_size(new_size, target)
        assert fit == (*new_size, top, bottom, left, right), (size, target)
        assert fit.height + fit.pad_top + fit.pad_bottom == target[0]
        assert fit.width + fit.pad_left + fit.pad_right == target[1]


@pytest.mark.parametrize("size", [(20, 50), (50, 20), (33, 33), (7, 60)])
def test_resize_and_pad_places_pixels_like_the_image_processor(size):
    # A white image through transformers' resize and pad: the white region is our box.
    processor = LlavaNextImageProcessorPil()
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    image = np.full((3, *size), 255, dtype=np.uint8)
    target = anyres.select_best_resolution(size, pinpoints)
    resized = processor._resize_for_patching(image, target, resample=processor.resample)
    padded = processor._pad_for_patching(resized, target)
    fit = anyres.resize_and_pad_size(size, target)
    expected = np.zeros(target, dtype=bool)
    expected[fit.pad_top : fit.pad_top + fit.height, fit.pad_left : fit.pad_left + fit.width] = True
    assert resized.shape[1:] == (fit.height, fit.width)
    np.testing.assert_array_equal(padded[0] > 0, expected)


def test_crop_boxes_match_divide_to_patches():
    canvas = np.arange(3 * 96 * 64).reshape(3, 96, 64)
    boxes = anyres.crop_boxes((96, 64), 32)
    patches = divide_to_patches(canvas, 32)
    assert len(boxes) == len(patches) == 6
    for (left, top, right, bottom), patch in zip(boxes, patches):
        np.testing.assert_array_equal(canvas[:, top:bottom, left:right], patch)
    with pytest.raises(ValueError, match="whole number"):
        anyres.crop_boxes((100, 64), 32)


@pytest.mark.parametrize(("pinpoints", "crop"), [(NEXT_PINPOINTS, 336), (OV_PINPOINTS, 384)], ids=["next", "onevision"])
def test_grid_shape_and_cells_match_transformers(pinpoints, crop):
    for size in random_sizes(300, seed=3):
        shape = anyres.anyres_grid_shape(size, pinpoints, crop)
        assert shape == tuple(hf_next.get_anyres_image_grid_shape(size, pinpoints, crop)), size
        # transformers counts the base image too
        assert anyres.num_grid_cells(size, pinpoints, crop) + 1 == hf_next.image_size_to_num_patches(
            size, pinpoints, crop
        )
    # image sizes arrive as tensors from a batch
    assert anyres.anyres_grid_shape(torch.tensor([500, 1200]), pinpoints, crop) == tuple(
        hf_next.get_anyres_image_grid_shape(torch.tensor([500, 1200]), pinpoints, crop)
    )


# --------------------------------------------------------------------------- feature maps


def test_unpad_matches_transformers():
    # sizes whose fitted side is computed as x.9999999: int() alone would drop a row
    for size, current, expected in [((55, 176), (24, 48), (16, 48)), ((309, 309), (24, 48), (24, 24))]:
        assert anyres.unpadded_shape(size, current) == expected
        assert tuple(hf_next.unpad_image(torch.zeros(1, *current), size).shape[1:]) == expected
    rng = random.Random(4)
    for size in random_sizes(300, seed=5):
        current = (rng.randint(1, 6) * rng.choice([4, 24, 27]), rng.randint(1, 6) * rng.choice([4, 24, 27]))
        features = torch.randn(2, *current)
        ours, theirs = anyres.unpad_features(features, size), hf_next.unpad_image(features, size)
        assert torch.equal(ours, theirs), (size, current)
        assert anyres.unpadded_shape(size, current) == tuple(theirs.shape[1:])


def test_reduced_shape_hand_computed():
    # OneVision, 27 features a crop side, N = 9: a 162x162 map (6x6 crops) has
    # ratio sqrt(162^2 / (9 * 27^2)) = 2 -> 81x81, i.e. 9 crops' worth.
    assert anyres.reduced_shape(162, 162, 9, 27) == (81, 81)
    # 84x84: ratio 84 / 81 = 1.04 <= 1.1, kept as is.
    assert anyres.reduced_shape(84, 84, 9, 27) == (84, 84)
    # 162x81: ratio sqrt(13122 / 6561) = sqrt(2) -> 162 // 1.414 = 114, 81 // 1.414 = 57.
    assert anyres.reduced_shape(162, 81, 9, 27) == (114, 57)
    features = torch.randn(5, 162, 81)
    assert anyres.reduce_features(features, 9, 27).shape == (5, 114, 57)
    small = torch.randn(5, 81, 84)
    assert anyres.reduce_features(small, 9, 27) is small
    assert anyres.parse_anyres_max("anyres_max_9") == 9
    with pytest.raises(ValueError, match="anyres_max_N"):
        anyres.parse_anyres_max("anyres_9")


# Small stand-ins for transformers' model `self`: pack_image_features and apply_pooling only
# read these config fields, so the reference runs without building a model.
SIDE, CROP = 4, 32  # 32-pixel crops of 8-pixel patches: 4x4 features a crop
TINY_PINPOINTS = [[h * CROP, w * CROP] for h in range(1, 5) for w in range(1, 5)]


def _stand_in(pinpoints):
    vision = SimpleNamespace(image_size=CROP, patch_size=CROP // SIDE)
    return SimpleNamespace(config=SimpleNamespace(vision_config=vision, image_grid_pinpoints=pinpoints))


def _crop_features(sizes, pinpoints, channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(1 + anyres.num_grid_cells(size, pinpoints, CROP), SIDE * SIDE, channels, generator=generator)
        for size in sizes
    ]


def test_pack_matches_transformers_llava_next():
    sizes = random_sizes(60, seed=6)
    features = _crop_features(sizes, TINY_PINPOINTS)
    newline = torch.randn(3)
    theirs, lens = hf_next.LlavaNextModel.pack_image_features(
        _stand_in(TINY_PINPOINTS), features, torch.tensor(sizes), "default", image_newline=newline
    )
    for size, feats, reference, length in zip(sizes, features, theirs, lens):
        ours = anyres.pack_anyres_features(feats, size, TINY_PINPOINTS, CROP, newline=newline)
        assert torch.equal(ours, reference), size
        assert (
            ours.shape[0]
            == length
            == anyres.num_image_tokens(
                "anyres", size, crop_size=CROP, patch_size=CROP // SIDE, pinpoints=TINY_PINPOINTS
            )
        )


@pytest.mark.parametrize("max_crops", [1, 2, 9])
def test_pack_matches_transformers_onevision(max_crops):
    sizes = random_sizes(60, seed=7)
    features = _crop_features(sizes, TINY_PINPOINTS, seed=max_crops)
    features.append(torch.randn(1, SIDE * SIDE, 3))  # a multi-image entry: base image only
    sizes.append((50, 70))
    newline = torch.randn(3)
    theirs, lens = hf_ov.LlavaOnevisionModel.pack_image_features(
        _stand_in(TINY_PINPOINTS), features, torch.tensor(sizes), newline, vision_aspect_ratio=f"anyres_max_{max_crops}"
    )
    reduced = 0
    for size, feats, reference in zip(sizes[:-1], features, theirs):
        ours = anyres.pack_anyres_features(feats, size, TINY_PINPOINTS, CROP, newline=newline, max_crops=max_crops)
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
        count = anyres.num_image_tokens(
            f"anyres_max_{max_crops}", size, crop_size=CROP, patch_size=CROP // SIDE, pinpoints=TINY_PINPOINTS
        )
        assert ours.shape[0] == count
        plain = anyres.anyres_feature_shape(size, TINY_PINPOINTS, CROP, CROP // SIDE)
        reduced += anyres.anyres_feature_shape(size, TINY_PINPOINTS, CROP, CROP // SIDE, max_crops) != plain
    assert reduced > 0  # the reduction was exercised
    base_only = anyres.pack_anyres_features(features[-1], sizes[-1], TINY_PINPOINTS, CROP, newline=newline)
    assert torch.equal(base_only, theirs[-1])
    assert base_only.shape[0] == anyres.num_image_tokens("fixed", crop_size=CROP, patch_size=8, newline=True)


def test_pack_hd_puts_global_features_last():
    size, pinpoints = (30, 100), anyres.hd_pinpoints(CROP)
    features = _crop_features([size], pinpoints)[0]
    newline = torch.zeros(3)
    packed = anyres.pack_anyres_features(features, size, pinpoints, CROP, newline=newline, base_first=False)
    assert torch.equal(packed[-SIDE * SIDE :], features[0])
    assert packed.shape[0] == anyres.num_image_tokens("hd", size, crop_size=CROP, patch_size=8)


# --------------------------------------------------------------------------- processor token counts


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<image>": 1, "<video>": 2, "describe": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", extra_special_tokens=["<image>", "<video>"]
    )


@pytest.mark.parametrize(("strategy", "extra"), [("default", 1), ("full", 0)], ids=["clip-default", "no-cls-full"])
def test_num_image_tokens_match_llava_next_processor(strategy, extra):
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=NEXT_PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra,
    )
    sizes = random_sizes(400, seed=8)
    expected = processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens
    ours = [
        anyres.num_image_tokens("anyres", size, crop_size=336, patch_size=14, pinpoints=NEXT_PINPOINTS)
        for size in sizes
    ]
    assert ours == expected


def test_llava_next_processor_expands_images_to_our_count():
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, image_grid_pinpoints=TINY_PINPOINTS
    )
    tokenizer = _tokenizer()
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="full"
    )
    for height, width in [(20, 70), (90, 30), (64, 64), (33, 97)]:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        inputs = processor(images=[image], text=["describe <image>"], return_tensors="pt")
        count = int((inputs["input_ids"] == tokenizer.convert_tokens_to_ids("<image>")).sum())
        assert count == anyres.num_image_tokens(
            "anyres", (height, width), crop_size=CROP, patch_size=8, pinpoints=TINY_PINPOINTS
        )
        assert inputs["pixel_values"].shape[1] == 1 + anyres.num_grid_cells((height, width), TINY_PINPOINTS, CROP)


def _onevision_processor() -> LlavaOnevisionProcessor:
    # The full constructor also wants a video processor, which needs torchvision; the token
    # arithmetic reads only these attributes.
    processor = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    processor.image_processor = LlavaOnevisionImageProcessorPil()
    processor.num_image_tokens = 729  # SigLIP 384 / 14: 27 x 27, no CLS
    processor.vision_aspect_ratio = "anyres_max_9"
    processor.vision_feature_select_strategy = "full"
    return processor


def test_num_image_tokens_match_onevision_processor():
    processor = _onevision_processor()
    for size in random_sizes(400, seed=9):
        expected = processor._get_number_of_features(*size, 384, 384)
        ours = anyres.num_image_tokens("anyres_max_9", size, crop_size=384, patch_size=14, pinpoints=OV_PINPOINTS)
        assert ours == expected, size


# --------------------------------------------------------------------------- video


@pytest.mark.parametrize("side", [27, 24, 5])
def test_bilinear_pooling_matches_transformers(side):
    stand_in = SimpleNamespace(
        config=SimpleNamespace(vision_config=SimpleNamespace(image_size=side * 14, patch_size=14))
    )
    frames = torch.randn(3, side * side, 8)
    theirs = hf_ov.LlavaOnevisionModel.apply_pooling(stand_in, frames)
    ours = anyres.pool_video_features(frames, "bilinear")
    torch.testing.assert_close(ours, theirs)
    assert ours.shape[1] == math.ceil(side / 2) ** 2
    grid = anyres.pool_video_features(frames.view(3, side, side, 8), "bilinear")
    torch.testing.assert_close(grid.reshape(3, -1, 8), theirs)


def test_average_and_max_pooling_hand_computed():
    # one frame, one channel, a 5x5 map 0..24; 2x2 windows with stride 2 drop the last row/column
    frame = torch.arange(25.0).view(1, 5, 5, 1)
    average = anyres.pool_video_features(frame, "average")[0, :, :, 0]
    maximum = anyres.pool_video_features(frame, "max")[0, :, :, 0]
    torch.testing.assert_close(average, torch.tensor([[3.0, 5.0], [13.0, 15.0]]))  # mean of 0,1,5,6 = 3
    torch.testing.assert_close(maximum, torch.tensor([[6.0, 8.0], [16.0, 18.0]]))
    assert anyres.pooled_shape(27, 27, "average") == (13, 13)
    assert anyres.pooled_shape(27, 27, "bilinear") == (14, 14)
    with pytest.raises(ValueError, match="pool mode"):
        anyres.pooled_shape(27, 27, "median")


def test_num_video_tokens_match_onevision_processor():
    processor = _onevision_processor()
    frame_counts = [1, 2, 8, 16, 32]
    expected = processor._get_num_multimodal_tokens(video_sizes=[(f, 384, 384) for f in frame_counts])
    assert [anyres.num_video_tokens(f, 27) for f in frame_counts] == expected.num_video_tokens
    # 8 frames pooled to 14x14: grid 8 * 14 * 15, frame 8 * (196 + 1), none 8 * 196
    assert anyres.num_video_tokens(8, 27, newline="grid") == 1680
    assert anyres.num_video_tokens(8, 27, newline="frame") == 1576
    assert anyres.num_video_tokens(8, 27, newline="none") == 1568
    assert anyres.num_video_tokens(8, 27, pool_mode="average", newline="one_token") == 8 * 169 + 1


@pytest.mark.parametrize("placement", anyres.VIDEO_NEWLINE_PLACEMENTS)
def test_video_newline_layout(placement):
    frames, side, channels = 3, 5, 2
    pooled = anyres.pool_video_features(torch.randn(frames, side * side, channels).abs() + 1)
    newline = torch.zeros(channels)
    h = w = math.ceil(side / 2)
    tokens = anyres.add_video_newlines(pooled.view(frames, h, w, channels), newline, placement)
    assert tokens.shape[0] == anyres.num_video_tokens(frames, side, newline=placement)
    is_newline = (tokens == 0).all(-1)
    positions = is_newline.nonzero().flatten().tolist()
    expected_positions = {
        "grid": [r * (w + 1) + w for r in range(frames * h)],
        "frame": [f * (h * w + 1) + h * w for f in range(frames)],
        "one_token": [frames * h * w],
        "none": [],
    }[placement]
    assert positions == expected_positions
    # the features themselves keep their frame-major, row-major order
    torch.testing.assert_close(tokens[~is_newline], pooled.reshape(-1, channels))


# --------------------------------------------------------------------------- the model itself


def test_tiny_llava_next_model_features_have_our_count():
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    from llavakit.tiny import tiny_text_config, tiny_vision_config

    torch.manual_seed(0)
    config = LlavaNextConfig(
        vision_config=tiny_vision_config("clip", image_size=CROP, patch_size=8),
        text_config=tiny_text_config("llama", vocab_size=64),
        image_grid_pinpoints=TINY_PINPOINTS,
        image_token_id=1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, image_grid_pinpoints=TINY_PINPOINTS
    )
    sizes = [(20, 70), (90, 30), (64, 64), (33, 97)]
    images = [np.zeros((h, w, 3), dtype=np.uint8) for h, w in sizes]
    inputs = image_processor(images, return_tensors="pt")
    with torch.no_grad():
        packed = model.model.get_image_features(
            inputs["pixel_values"],
            inputs["image_sizes"],
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        ).pooler_output
    for size, features in zip(sizes, packed):
        expected = anyres.num_image_tokens("anyres", size, crop_size=CROP, patch_size=8, pinpoints=TINY_PINPOINTS)
        assert features.shape[0] == expected, size


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="image_size must be positive"):
        anyres.select_best_resolution((0, 10), NEXT_PINPOINTS)
    with pytest.raises(ValueError, match=r"image_size must be \(height, width\)"):
        anyres.select_best_resolution((10,), NEXT_PINPOINTS)
    with pytest.raises(ValueError, match="whole number"):
        anyres.anyres_grid_shape((100, 100), [[300, 600]], 336)
    with pytest.raises(ValueError, match="unknown image token mode"):
        anyres.num_image_tokens("tiles", (100, 100), crop_size=336, patch_size=14, pinpoints=NEXT_PINPOINTS)
    with pytest.raises(ValueError, match="needs image_size"):
        anyres.num_image_tokens("anyres", None, crop_size=336, patch_size=14, pinpoints=NEXT_PINPOINTS)
    with pytest.raises(ValueError, match="2x2 crops"):
        anyres.merge_crop_features(torch.zeros(3, 16, 2), 2, 2)
    with pytest.raises(ValueError, match="square map"):
        anyres.pool_video_features(torch.zeros(2, 10, 4))
    with pytest.raises(ValueError, match="newline placement"):
        anyres.num_video_tokens(4, 27, newline="row")
