"""Training batches: right padding, packing, and modality-length grouped sampling.

Both collators take the items of `LlavaDataset` of every record format alike (conversations,
interleaved documents, text: `llavakit.data.formats`) (`input_ids`, `labels`, `attention_mask`,
`pixel_values`, `sample_id`, and in the grid and video modes `image_sizes`, `image_num_crops`,
`pixel_values_videos`, `video_num_frames`), drop the bad ones (`{"skipped": reason,
"sample_id": id}`) and list them under `skipped_samples` as (sample_id, reason) pairs; the
trainer pops that key before the forward pass, counts and reports it. A batch whose every item
was skipped holds only `skipped_samples`: there is nothing to run, so the trainer must skip
that step.

The visual tensors are joined along their first dimension in the order the samples' `<image>`
/ `<video>` tokens appear in the batch (row by row), which is the order the model scatters
features in: every image's crops stay together with its `image_sizes` row and
`image_num_crops` entry, every video's frames with its `video_num_frames` entry.
`pixel_values` is None when no sample has an image; the other visual keys appear only when
some sample has them. Each sample's layout is checked against its own pixels first, because
one wrong count would shift the features of every later sample in the batch.

Packing puts several samples in one row with `position_ids` restarting at 0 for each, no
`attention_mask`, and `use_cache=False`. From those position ids transformers itself builds a
block-diagonal causal mask (`masking_utils.find_packed_sequence_indices`; sdpa, eager and flex
attention), so no token attends across samples. It does so only when no cache is passed, and
a decoder whose config has `use_cache=True` makes one even in training, so the batch turns the
cache off. With flash-attention, `return_flash_attn_kwargs=True` adds the varlen boundaries
(`cu_seq_lens_q/k`, `max_length_q/k`), which transformers' flash path reads for any number of rows.
The mean token loss of a packed batch equals that of the padded one (tests/test_collator.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from llavakit.processing.processor import IGNORE_INDEX

_TOKEN_KEYS = ("input_ids", "labels", "attention_mask")
# Visual tensors, joined along their first dimension; `pixel_values` is always in a batch.
_VISUAL_KEYS = ("pixel_values", "image_sizes", "image_num_crops", "pixel_values_videos", "video_num_frames")
# Per-sample layout keys and the pixel tensor whose rows each one describes.
_LAYOUT_KEYS = {
    "image_sizes": "pixel_values",
    "image_num_crops": "pixel_values",
    "video_num_frames": "pixel_values_videos",
}
_KNOWN_KEYS = frozenset({*_TOKEN_KEYS, *_VISUAL_KEYS, "sample_id"})

SkippedSamples = list[tuple[str, str]]


def split_skipped(features: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], SkippedSamples]:
    """The good items, and (sample_id, reason) for the skipped ones; unknown keys raise (nothing is dropped unseen).

    Good items come back with flat videos and their frame counts, their layouts checked.
    """
    kept, skipped = [], []
    for feature in features:
        if "skipped" in feature:
            skipped.append((str(feature.get("sample_id")), str(feature["skipped"])))
            continue
        unknown = set(feature) - _KNOWN_KEYS
        if unknown:
            raise ValueError(
                f"sample {feature.get('sample_id')!r} has keys the collator does not know how to batch: "
                f"{sorted(unknown)}"
            )
        kept.append(_flat_videos(feature))
        _check_layout(kept[-1])
    return kept, skipped


def _has(feature: Mapping[str, Any], key: str) -> bool:
    value = feature.get(key)
    return value is not None and len(value) > 0


def _flat_videos(feature: Mapping[str, Any]) -> Mapping[str, Any]:
    """The sample's videos as flat frames with explicit counts. The model reads flat frames without
    counts as one video; joined with another sample's frames they would become one long video."""
    if not _has(feature, "pixel_values_videos"):
        return feature
    videos = torch.as_tensor(feature["pixel_values_videos"])
    if videos.dim() == 5:  # (videos, frames, 3, S, S)
        counts = torch.full((videos.shape[0],), videos.shape[1], dtype=torch.long)
        return {**feature, "pixel_values_videos": videos.flatten(0, 1), "video_num_frames": counts}
    if feature.get("video_num_frames") is None:
        return {**feature, "video_num_frames": torch.tensor([videos.shape[0]], dtype=torch.long)}
    return feature


def _check_count(feature: Mapping[str, Any], counts_key: str, pixels_key: str) -> None:
    counts = feature.get(counts_key)
    if counts is None:
        return
    rows = len(feature[pixels_key]) if _has(feature, pixels_key) else 0
    counts = torch.as_tensor(counts).reshape(-1)
    if int(counts.sum()) != rows:
        raise ValueError(
            f"sample {feature.get('sample_id')!r}: {counts_key} {counts.tolist()} adds up to {int(counts.sum())}, "
            f"but its {pixels_key} holds {rows}"
        )


def _check_layout(feature: Mapping[str, Any]) -> None:
    """A sample's crop and frame counts must add up to its own pixels (see the module docstring)."""
    if _has(feature, "pixel_values") and torch.as_tensor(feature["pixel_values"]).dim() != 4:
        shape = tuple(torch.as_tensor(feature["pixel_values"]).shape)
        raise ValueError(
            f"sample {feature.get('sample_id')!r}: pixel_values must be flat (crops, 3, H, W), as the processor "
            f"gives them, to be joined with other samples' crops; got {shape}"
        )
    _check_count(feature, "image_num_crops", "pixel_values")
    _check_count(feature, "video_num_frames", "pixel_values_videos")
    sizes, crops = feature.get("image_sizes"), feature.get("image_num_crops")
    if sizes is not None and crops is not None and len(sizes) != len(crops):
        raise ValueError(
            f"sample {feature.get('sample_id')!r}: {len(sizes)} image_sizes but {len(crops)} image_num_crops"
        )


def _check_same_layout(features: Sequence[Mapping[str, Any]]) -> None:
    """A layout key that some samples with pixels carry and others lack cannot be joined in order."""
    for key, pixels in _LAYOUT_KEYS.items():
        with_pixels = [f for f in features if _has(f, pixels)]
        lacking = [f for f in with_pixels if f.get(key) is None]
        if lacking and len(lacking) != len(with_pixels):
            raise ValueError(
                f"sample {lacking[0].get('sample_id')!r} has {pixels} but no {key}, unlike others in the batch; "
                "encode every sample with the same processor"
            )


def _join(features: Sequence[Mapping[str, Any]], key: str) -> torch.Tensor | None:
    parts = [torch.as_tensor(f[key]) for f in features if _has(f, key)]
    return torch.cat(parts) if parts else None


def visual_batch(features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor | None]:
    """The samples' visual tensors joined in the given order (the order of their placeholders in the batch).

    `pixel_values` is always there (None without images); each other key only when some sample has it.
    """
    _check_same_layout(features)
    batch: dict[str, torch.Tensor | None] = {}
    for key in _VISUAL_KEYS:
        joined = _join(features, key)
        if joined is not None or key == "pixel_values":
            batch[key] = joined
    return batch


def _tokens(feature: Mapping[str, Any], key: str) -> torch.Tensor:
    return torch.as_tensor(feature[key], dtype=torch.long).reshape(-1)


def _drop_over_length(features, max_length: int | None, skipped: SkippedSamples) -> list[Mapping[str, Any]]:
    """Samples longer than `max_length` are skipped, not truncated: a cut could split an image's tokens."""
    if max_length is None:
        return list(features)
    kept = []
    for feature in features:
        length = len(_tokens(feature, "input_ids"))
        if length > max_length:
            reason = f"over max length: {length} tokens > max_length={max_length}"
            skipped.append((str(feature.get("sample_id")), reason))
        else:
            kept.append(feature)
    return kept


def _round_up(length: int, multiple: int | None) -> int:
    return length if not multiple else -(-length // multiple) * multiple


class PaddingCollator:
    """Right-pads `input_ids` with `pad_token_id`, `labels` with -100 and `attention_mask` with 0.

    `max_length`: longer samples are skipped and reported. `pad_to_multiple_of`: round the
    padded length up (tensor-core friendly shapes on GPUs).
    """

    def __init__(self, pad_token_id: int, max_length: int | None = None, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("PaddingCollator needs a pad_token_id (the tokenizer has no pad token?)")
        self.pad_token_id = int(pad_token_id)
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        features, skipped = split_skipped(features)
        features = _drop_over_length(features, self.max_length, skipped)
        if not features:
            return {"skipped_samples": skipped}
        width = _round_up(max(len(_tokens(f, "input_ids")) for f in features), self.pad_to_multiple_of)
        fill = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}
        batch: dict[str, Any] = {}
        for key in _TOKEN_KEYS:
            rows = torch.full((len(features), width), fill[key], dtype=torch.long)
            for row, feature in enumerate(features):
                values = _tokens(feature, key) if key in feature else torch.ones(len(_tokens(feature, "input_ids")))
                rows[row, : len(values)] = values
            batch[key] = rows
        batch.update(visual_batch(features))
        batch["skipped_samples"] = skipped
        return batch


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most `capacity` tokens: each goes to the first row with room."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"item {index} has {length} tokens, more than the row capacity {capacity}")
        for row, free in enumerate(room):
            if length <= free:
                rows[row].append(index)
                room[row] -= length
                break
        else:
            rows.append([index])
            room.append(capacity - length)
    return rows


class PackingCollator:
    """Packs the batch's samples into as few rows of at most `max_length` tokens as first-fit allows.

    Each sample keeps its own `position_ids` (0, 1, ...) and its first label is -100, so no
    token is predicted across a sample boundary. Rows are right-padded to the longest row
    with `pad_token_id` (never the image token), the padding forming its own position run.
    """

    def __init__(
        self,
        max_length: int,
        pad_token_id: int = 0,
        pad_to_multiple_of: int | None = None,
        return_flash_attn_kwargs: bool = False,
    ):
        if max_length < 1:
            raise ValueError(f"PackingCollator needs a positive max_length, got {max_length}")
        self.max_length = max_length
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_flash_attn_kwargs = return_flash_attn_kwargs

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        features, skipped = split_skipped(features)
        features = _drop_over_length(features, self.max_length, skipped)
        if not features:
            return {"skipped_samples": skipped}
        ids = [_tokens(f, "input_ids") for f in features]
        rows = first_fit([len(x) for x in ids], self.max_length)
        width = _round_up(max(sum(len(ids[i]) for i in row) for row in rows), self.pad_to_multiple_of)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        sequence_lengths = []
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                length = len(ids[i])
                input_ids[r, start : start + length] = ids[i]
                labels[r, start : start + length] = _tokens(features[i], "labels")
                labels[r, start] = IGNORE_INDEX
                position_ids[r, start : start + length] = torch.arange(length)
                sequence_lengths.append(length)
                start += length
            if start < width:
                position_ids[r, start:] = torch.arange(width - start)
                sequence_lengths.append(width - start)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            # Row by row, each row in its samples' order: the order of the placeholders in `input_ids`.
            **visual_batch([features[i] for row in rows for i in row]),
            "use_cache": False,
        }
        if self.return_flash_attn_kwargs:
            boundaries = torch.tensor([0, *sequence_lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch.update(
                cu_seq_lens_q=boundaries,
                cu_seq_lens_k=boundaries,
                max_length_q=max(sequence_lengths),
                max_length_k=max(sequence_lengths),
            )
        batch["skipped_samples"] = skipped
        return batch


# ---- sampling ---------------------------------------------------------------------------------


def _split_evenly(megabatch: list[int], lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Longest-first indices into `parts` equal-size chunks with similar total length (one per rank)."""
    if len(megabatch) % parts:
        return [megabatch[i::parts] for i in range(parts)]
    size = len(megabatch) // parts
    chunks: list[list[int]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for index in megabatch:
        chunk = min((c for c in range(parts) if len(chunks[c]) < size), key=lambda c: totals[c])
        chunks[chunk].append(index)
        totals[chunk] += abs(lengths[index])
    return chunks


def _length_grouped(
    indices: list[int], lengths: Sequence[int], megabatch_size: int, world_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Shuffle, cut into megabatches, sort each longest-first and split it across ranks."""
    order = torch.randperm(len(indices), generator=generator).tolist()
    megabatches = []
    for start in range(0, len(order), megabatch_size):
        chunk = sorted((indices[i] for i in order[start : start + megabatch_size]), key=lambda i: -abs(lengths[i]))
        megabatches.append([i for part in _split_evenly(chunk, lengths, world_size) for i in part])
    return megabatches


def modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """LLaVA's grouping: image (length > 0) and text-only (< 0) samples in separate megabatches
    of `batch_size * world_size`, similar lengths together, megabatch order shuffled; the two
    incomplete remainders go last, so at most the final batches mix modalities."""
    if any(length == 0 for length in lengths):
        raise ValueError("modality lengths must be non-zero: positive with images, negative for text-only")
    size = batch_size * world_size
    groups = [[i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n < 0]]
    full, remainders = [], []
    for group in groups:
        if not group:
            continue
        megabatches = _length_grouped(group, lengths, size, world_size, generator)
        if len(megabatches[-1]) < size:
            remainders.append(megabatches.pop())
        full += megabatches
    order = torch.randperm(len(full), generator=generator).tolist()
    return [i for k in order for i in full[k]] + [i for remainder in remainders for i in remainder]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Yields dataset indices so that batches hold one modality and similar lengths.

    The order depends only on `seed` and the epoch (`set_epoch`, called by the training loop),
    so a resumed run sees the same batches. `world_size` is the number of data-parallel ranks
    that split each megabatch of `batch_size * world_size` samples, one `batch_size` per rank.
    """

    def __init__(self, modality_lengths: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0):
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be positive, got {batch_size} and {world_size}")
        self.lengths = list(modality_lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator))


__all__ = [
    "ModalityLengthGroupedSampler",
    "PackingCollator",
    "PaddingCollator",
    "first_fit",
    "modality_length_grouped_indices",
    "split_skipped",
    "visual_batch",
]
