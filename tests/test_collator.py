"""Collation: right padding, packing (same loss, no attention across samples) and modality grouping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.masking_utils import find_packed_sequence_indices

from llavakit import LlavaKitForCausalLM
from llavakit.data.batching import (
    ModalityLengthGroupedSampler,
    PackingCollator,
    PaddingCollator,
    first_fit,
    modality_length_grouped_indices,
)
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_llava_config

PAD = 3


def item(sample_id: str, ids: list[int], labels: list[int] | None = None, images: int = 0) -> dict:
    """A hand-made dataset item; each image's pixels are filled with its sample's number."""
    pixels = torch.full((images, 3, 2, 2), float(sample_id[1:])) if images else None
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels if labels is not None else ids),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "pixel_values": pixels,
        "sample_id": sample_id,
    }


# ---- padding ---------------------------------------------------------------------------------


def test_padding_collator_right_pads_and_reports_skipped_items():
    batch = PaddingCollator(pad_token_id=PAD)(
        [
            item("s1", [10, 11, 12], [-100, 11, 12], images=1),
            {"skipped": "missing image: a.png does not exist", "sample_id": "s2"},
            item("s3", [20, 21]),
            item("s4", [30, 31, 32, 33, 34], images=2),
        ]
    )
    assert batch["input_ids"].tolist() == [[10, 11, 12, PAD, PAD], [20, 21, PAD, PAD, PAD], [30, 31, 32, 33, 34]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, -100], [20, 21, -100, -100, -100], [30, 31, 32, 33, 34]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 4.0, 4.0]  # s1's image, then s4's two
    assert batch["skipped_samples"] == [("s2", "missing image: a.png does not exist")]
    assert set(batch) == {"input_ids", "labels", "attention_mask", "pixel_values", "skipped_samples"}


def test_padding_collator_limits_multiples_and_errors():
    collator = PaddingCollator(pad_token_id=PAD, max_length=3, pad_to_multiple_of=4)
    batch = collator([item("s1", [1, 2]), item("s2", [1, 2, 3, 4])])
    assert batch["input_ids"].tolist() == [[1, 2, PAD, PAD]] and batch["pixel_values"] is None
    assert batch["skipped_samples"] == [("s2", "over max length: 4 tokens > max_length=3")]
    assert collator([{"skipped": "empty turn: x", "sample_id": "s9"}]) == {"skipped_samples": [("s9", "empty turn: x")]}
    with pytest.raises(ValueError, match=r"'s1' has keys .*pixel_values_audio"):
        collator([{**item("s1", [1]), "pixel_values_audio": torch.zeros(1)}])


# ---- high-resolution and video keys ----------------------------------------------------------


def grid_item(sample_id: str, ids: list[int], crops: list[int], frames: list[int] = ()) -> dict:
    """An item in the grid / video layout; crop and frame pixels carry (sample number, image or video index)."""
    number = float(sample_id[1:])
    pixels = torch.cat([torch.full((n, 3, 2, 2), number + k / 10) for k, n in enumerate(crops)]) if crops else None
    feature = {**item(sample_id, ids), "pixel_values": pixels}
    if crops:
        feature["image_sizes"] = torch.tensor([[10 * number + k, 20] for k in range(len(crops))])
        feature["image_num_crops"] = torch.tensor(crops)
    if frames:
        feature["pixel_values_videos"] = torch.cat(
            [torch.full((n, 3, 2, 2), -number - k / 10) for k, n in enumerate(frames)]
        )
        feature["video_num_frames"] = torch.tensor(frames)
    return feature


def test_padding_collator_joins_grid_and_video_keys_in_sample_order():
    batch = PaddingCollator(pad_token_id=PAD)(
        [
            grid_item("s1", [1, 2], crops=[3]),
            {"skipped": "corrupt video: c.mp4 cannot be decoded", "sample_id": "s2"},
            grid_item("s3", [1], crops=[], frames=[2]),
            grid_item("s4", [1, 2, 3], crops=[1, 1], frames=[1, 3]),
        ]
    )
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == pytest.approx([1.0] * 3 + [4.0, 4.1])
    assert batch["image_sizes"].tolist() == [[10, 20], [40, 20], [41, 20]]
    assert batch["image_num_crops"].tolist() == [3, 1, 1]
    assert batch["pixel_values_videos"][:, 0, 0, 0].tolist() == pytest.approx([-3.0, -3.0, -4.0, -4.1, -4.1, -4.1])
    assert batch["video_num_frames"].tolist() == [2, 1, 3]
    assert batch["skipped_samples"] == [("s2", "corrupt video: c.mp4 cannot be decoded")]
    only_text = PaddingCollator(pad_token_id=PAD)([grid_item("s5", [1], crops=[])])
    assert set(only_text) == {"input_ids", "labels", "attention_mask", "pixel_values", "skipped_samples"}


def test_packing_collator_joins_grid_and_video_keys_in_row_order():
    features = [
        grid_item("s1", [11] * 5, crops=[2]),
        grid_item("s2", [12] * 4, crops=[3], frames=[2]),
        grid_item("s3", [13] * 3, crops=[1, 1]),
        grid_item("s4", [14] * 2, crops=[], frames=[1]),
    ]
    batch = PackingCollator(max_length=8, pad_token_id=PAD)(features)
    # first fit: row 0 = s1 + s3, row 1 = s2 + s4; the visuals follow the rows, not the input order
    assert batch["input_ids"][:, 0].tolist() == [11, 12]
    assert batch["image_sizes"][:, 0].tolist() == [10, 30, 31, 20]
    assert batch["image_num_crops"].tolist() == [2, 1, 1, 3]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == pytest.approx([1.0, 1.0, 3.0, 3.1, 2.0, 2.0, 2.0])
    assert batch["video_num_frames"].tolist() == [2, 1]
    assert batch["pixel_values_videos"][:, 0, 0, 0].tolist() == pytest.approx([-2.0, -2.0, -4.0])


def test_collators_fill_video_counts_and_reject_layouts_that_do_not_add_up():
    collator = PaddingCollator(pad_token_id=PAD)
    # Frames without counts are one video each (as the model reads them), not one long video once joined.
    flat = {**item("s1", [1]), "pixel_values_videos": torch.zeros(3, 3, 2, 2)}
    five_d = {**item("s2", [1]), "pixel_values_videos": torch.zeros(2, 2, 3, 2, 2)}
    batch = collator([flat, five_d, grid_item("s3", [1], crops=[], frames=[4])])
    assert batch["video_num_frames"].tolist() == [3, 2, 2, 4] and batch["pixel_values_videos"].shape[0] == 11
    with pytest.raises(ValueError, match=r"'s4': image_num_crops \[3\] adds up to 3, but its pixel_values holds 2"):
        collator([{**grid_item("s4", [1], crops=[2]), "image_num_crops": torch.tensor([3])}])
    with pytest.raises(
        ValueError, match=r"'s5': video_num_frames \[1\] adds up to 1, but its pixel_values_videos holds 2"
    ):
        collator([{**grid_item("s5", [1], crops=[], frames=[2]), "video_num_frames": torch.tensor([1])}])
    with pytest.raises(ValueError, match=r"'s6': 2 image_sizes but 1 image_num_crops"):
        collator([{**grid_item("s6", [1], crops=[2]), "image_sizes": torch.tensor([[1, 1], [2, 2]])}])
    with pytest.raises(ValueError, match=r"'s7': pixel_values must be flat"):
        collator([{**grid_item("s7", [1], crops=[2]), "pixel_values": torch.zeros(1, 2, 3, 2, 2)}])
    with pytest.raises(ValueError, match=r"'s8' has pixel_values but no image_sizes, unlike others"):
        PackingCollator(max_length=8)([grid_item("s7", [1], crops=[2]), item("s8", [2], images=1)])


# ---- packing ---------------------------------------------------------------------------------


def test_first_fit_keeps_order_and_fills_earlier_rows():
    assert first_fit([5, 4, 3, 2, 8, 1], capacity=8) == [[0, 2], [1, 3, 5], [4]]
    with pytest.raises(ValueError, match="more than the row capacity"):
        first_fit([9], capacity=8)


def test_packing_collator_layout_positions_and_image_order():
    features = [
        item("s1", [11] * 5, images=1),
        item("s2", [12] * 4, images=1),
        {"skipped": "corrupt image: b.png", "sample_id": "s5"},
        item("s3", [13] * 3, images=2),
        item("s4", [14] * 2),
    ]
    batch = PackingCollator(max_length=8, pad_token_id=PAD, return_flash_attn_kwargs=True)(features)
    # first fit: row 0 = s1 + s3 (8), row 1 = s2 + s4 (6) + 2 padding
    assert batch["input_ids"].tolist() == [[11] * 5 + [13] * 3, [12] * 4 + [14] * 2 + [PAD] * 2]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 0, 1]]
    # the first label of every sample is dropped: nothing is predicted across a boundary
    assert batch["labels"].tolist() == [[-100, 11, 11, 11, 11, -100, 13, 13], [-100, 12, 12, 12, -100, 14, -100, -100]]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 3.0, 3.0, 2.0]  # row order: s1, s3, s3, s2
    assert batch["use_cache"] is False and "attention_mask" not in batch
    assert batch["skipped_samples"] == [("s5", "corrupt image: b.png")]
    # transformers sees the same sample boundaries in the position ids
    segments = find_packed_sequence_indices(batch["position_ids"])
    assert segments.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 2, 2]]
    # flash-attention varlen boundaries over the flattened rows (padding is its own sequence)
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 8, 12, 14, 16] and batch["max_length_k"] == 5
    assert batch["cu_seq_lens_q"].dtype == torch.int32


def test_packing_collator_skips_samples_longer_than_a_row():
    batch = PackingCollator(max_length=4)([item("s1", [1] * 5), item("s2", [2] * 2)])
    assert batch["input_ids"].tolist() == [[2, 2]] and batch["position_ids"].tolist() == [[0, 1]]
    assert batch["skipped_samples"] == [("s1", "over max length: 5 tokens > max_length=4")]


# ---- packing does not change the loss --------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_items(tiny_tokenizer):
    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config).eval()
    rng = np.random.default_rng(0)
    conversations = [
        ("<image>\nWhat color is the square?", "The square is blue.", 1),
        ("Tell me a fact.", "Paris is the capital of France.", 0),
        ("<image>\n<image>\nCompare the two images.", "The first shows a circle, the second a star.", 2),
        ("Is the circle larger than the square?", "Yes.", 0),
        ("<image>\nDescribe the image in detail.", "A small green triangle next to a large yellow circle.", 1),
    ]
    items = []
    for index, (question, answer, images) in enumerate(conversations):
        pictures = [rng.integers(0, 256, (20, 28, 3), dtype=np.uint8) for _ in range(images)]
        conversation = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        items.append({**processor.encode_conversation(conversation, images=pictures), "sample_id": f"s{index}"})
    return model, items, tiny_tokenizer.pad_token_id


def forward(model, batch):
    inputs = {key: value for key, value in batch.items() if key != "skipped_samples"}
    with torch.no_grad():
        return model(**inputs)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packing_does_not_change_the_loss(model_and_items, attention):
    model, items, pad = model_and_items
    model.set_attn_implementation(attention)
    lengths = [len(x["input_ids"]) for x in items]
    capacity = max(lengths) + min(lengths) + 5
    packed = PackingCollator(max_length=capacity, pad_token_id=pad)(items)
    assert 1 < packed["input_ids"].shape[0] < len(items)  # really packed, into more than one row
    padded = PaddingCollator(pad_token_id=pad)(items)
    padded_loss, packed_loss = forward(model, padded).loss, forward(model, packed).loss
    assert torch.isfinite(padded_loss)
    assert abs(padded_loss.item() - packed_loss.item()) < 1e-5
    # Every packed sample's logits equal the logits of that sample run alone.
    logits = forward(model, packed).logits
    rows = first_fit(lengths, capacity)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            alone = forward(model, PaddingCollator(pad_token_id=pad)([items[i]])).logits[0]
            torch.testing.assert_close(logits[r, start : start + lengths[i]], alone, atol=1e-5, rtol=1e-4)
            start += lengths[i]
    # Why the batch carries use_cache=False: with a cache transformers stops reading packing from position ids.
    leaky = forward(model, {**packed, "use_cache": True}).logits
    assert (leaky - logits).abs().max() > 0.1


# ---- modality-length grouping ----------------------------------------------------------------


def batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def test_grouped_sampler_batches_modalities_apart_and_sorts_lengths():
    rng = np.random.default_rng(0)
    lengths = [int(n) if rng.random() < 0.6 else -int(n) for n in rng.integers(1, 500, size=103)]
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=4, world_size=1, seed=7)
    order = list(sampler)
    assert sorted(order) == list(range(103)) and len(sampler) == 103
    groups = batches(order, 4)
    mixed = [k for k, group in enumerate(groups) if len({lengths[i] > 0 for i in group}) > 1]
    assert len(mixed) <= 1 and all(k >= len(groups) - 2 for k in mixed)  # only a leftover batch at the end
    images = sum(length > 0 for length in lengths)
    full = (images // 4) + ((103 - images) // 4)
    for group in groups[:full]:  # every full batch: one modality, longest first
        assert [abs(lengths[i]) for i in group] == sorted((abs(lengths[i]) for i in group), reverse=True)
    assert list(sampler) == order  # deterministic
    sampler.set_epoch(1)
    assert list(sampler) != order
    assert list(ModalityLengthGroupedSampler(lengths, 4, 1, seed=7)) == order


def test_grouped_sampler_balances_ranks_and_rejects_zero_lengths():
    lengths = [10, 9, 8, 1, -5, -5, -4, -4]
    generator = torch.Generator().manual_seed(0)
    order = modality_length_grouped_indices(lengths, batch_size=2, world_size=2, generator=generator)
    # one image megabatch and one text megabatch of 4, each split into two rank batches of 2
    rank_batches = batches(order, 2)
    by_megabatch = [rank_batches[0] + rank_batches[1], rank_batches[2] + rank_batches[3]]
    assert sorted(map(sorted, by_megabatch)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    image_ranks = rank_batches[:2] if 0 in by_megabatch[0] else rank_batches[2:]
    # longest-first greedy balance: 10 -> rank 0, 9 -> rank 1, 8 -> rank 1 (lighter), 1 -> rank 0
    assert image_ranks == [[0, 3], [1, 2]]
    same_modality = modality_length_grouped_indices([3, 2, 1], 2, 1, torch.Generator().manual_seed(0))
    assert sorted(same_modality) == [0, 1, 2]
    with pytest.raises(ValueError, match="non-zero"):
        modality_length_grouped_indices([3, 0, -1], 2, 1, torch.Generator())
