"""Datasets and mixtures: the LLaVA records of several files as one torch Dataset.

Mixtures: a list of `DatasetSpec`s, each with a `fraction` (seeded random downsampling, as in
LLaVA-1.5's data-efficiency study) and an optional response-format prompt appended to every
human turn (LLaVA-1.5's "Answer the question using a single word or phrase." for short-answer
VQA sets). Records are read and checked by `llavakit.data.records`; images and videos are
decoded only when a sample is drawn, and the length estimates that group batches read image
headers at most.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from llavakit.data.records import (
    LOAD_ERROR_KEY,
    BadSampleError,
    DatasetSpec,
    encode_sample,
    image_paths,
    load_records,
    sample_id_of,
    turn_texts,
    video_paths,
)
from llavakit.errors import ConfigError
from llavakit.processing.processor import LlavaKitProcessor

_EXIF_ORIENTATION = 0x0112

logger = logging.getLogger(__name__)

T = TypeVar("T")


def downsample(records: Sequence[T], fraction: float, seed: int) -> list[T]:
    """`round(fraction * n)` records (at least one when there are any), drawn without replacement."""
    if fraction >= 1.0 or not records:
        return list(records)
    keep = max(1, round(fraction * len(records)))
    chosen = np.random.default_rng(seed).choice(len(records), size=keep, replace=False)
    return [records[i] for i in sorted(chosen.tolist())]


def _visual_count(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key)
    return 0 if not value else 1 if isinstance(value, str) else len(value) if isinstance(value, list) else 0


def estimate_length(record: Any, num_image_tokens: int, visual_tokens: int | None = None) -> int:
    """Cheap length for grouping, without decoding: words + visual tokens; negative if text-only.

    `visual_tokens`: the record's image and video tokens when the caller knows them
    (`estimate_visual_tokens`); default `num_image_tokens` per image or video. Never 0 (the
    sign carries the modality), so unreadable records count as 1-token text.
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("conversations"), list):
        return -1
    turns = [turn for turn in record["conversations"] if isinstance(turn, Mapping)]
    words = sum(len(text.split()) for text in turn_texts(turns))
    count = _visual_count(record, "image") + _visual_count(record, "video")
    if not count:
        return -max(words, 1)
    return max(words + (count * num_image_tokens if visual_tokens is None else visual_tokens), 1)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation the header carries (PIL's `getexif` would decode a PNG to look further;
    a TIFF's size is already rotated when PIL opens it)."""
    exif = image.info.get("exif")
    if not isinstance(exif, bytes):
        return 1
    tags = Image.Exif()
    tags.load(exif)
    return int(tags.get(_EXIF_ORIENTATION, 1))


def image_header_size(path: str | Path) -> tuple[int, int] | None:
    """An image's (height, width) as `load_image` will give it (EXIF rotation applied), read from
    its header only: PIL opens files lazily, so no pixel is decoded. None when unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = _orientation(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _image_tokens(processor: LlavaKitProcessor, path: Path, base_only: bool) -> int:
    if processor.highres is None or base_only:
        return processor.image_token_count(base_only=True)
    size = image_header_size(path)
    return processor.image_token_count(size) if size is not None else processor.image_token_count(base_only=True)


def estimate_visual_tokens(
    record: Any,
    image_folder: str | Path,
    processor: LlavaKitProcessor,
    video_folder: str | Path | None = None,
    allow_outside_paths: bool = False,
) -> int:
    """The record's `<image>` and `<video>` tokens as `processor` will write them, without decoding.

    Grid modes: each image's grid token count from its header size (base-only for the images
    of a multi-image sample when the layout says so; an unreadable image counts as base-only).
    Videos: the tokens of `max_frames` frames, the most the processor's sampling keeps.
    """
    if not isinstance(record, Mapping):
        return 0
    try:
        images = image_paths(record, image_folder, allow_outside_paths)
        videos = video_paths(record, image_folder if video_folder is None else video_folder, allow_outside_paths)
    except BadSampleError:
        return 0
    highres = processor.highres
    base_only = highres is not None and highres.multi_image_base_only and len(images) > 1
    tokens = sum(_image_tokens(processor, path, base_only) for path in images)
    if videos:
        video = processor.video
        per_video = video.num_tokens(video.sampling.max_frames) if video is not None else processor.num_image_tokens
        tokens += len(videos) * per_video
    return tokens


# ---- the mixture ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MixtureEntry:
    """One record of a mixture: which dataset it came from and its sample id."""

    spec_index: int
    sample_id: str
    record: Any


@dataclass
class Mixture:
    """The records of a mixture after downsampling, each dataset's record count before it, and the
    sample ids that repeat within a dataset: (dataset name, id, times), in file order."""

    entries: list[MixtureEntry]
    totals: list[int]
    duplicate_ids: list[tuple[str, str, int]] = field(default_factory=list)

    def duplicates_summary(self, shown: int = 5) -> str:
        """One line: how many ids repeat and the first few, or "" when none do."""
        if not self.duplicate_ids:
            return ""
        examples = ", ".join(f"{name}: {sample_id!r} x{times}" for name, sample_id, times in self.duplicate_ids[:shown])
        more = f", ... ({len(self.duplicate_ids) - shown} more)" if len(self.duplicate_ids) > shown else ""
        return (
            f"{len(self.duplicate_ids)} sample id(s) repeat within a dataset ({examples}{more}); every sample is "
            "still used, but reports and predictions name samples by id"
        )


def read_mixture(specs: Sequence[DatasetSpec], seed: int) -> Mixture:
    """Entries of every dataset after downsampling, with each dataset's record count before it."""
    if not specs:
        raise ConfigError("a dataset mixture needs at least one DatasetSpec")
    mixture = Mixture([], [])
    for index, spec in enumerate(specs):
        records = load_records(spec)
        mixture.totals.append(len(records))
        mixture.duplicate_ids += [(spec.name, sample_id, times) for sample_id, times in _repeated_ids(records)]
        numbered = [(sample_id_of(r, f"{spec.name}#{i}"), r) for i, r in enumerate(records)]
        kept = downsample(numbered, float(spec.fraction), seed=_dataset_seed(seed, index))
        mixture.entries += [MixtureEntry(index, sample_id, record) for sample_id, record in kept]
    return mixture


def _repeated_ids(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """Ids that records give themselves more than once (load-error markers aside), in file order."""
    ids = Counter(sample_id_of(r, "") for r in records if r.get("id") is not None and LOAD_ERROR_KEY not in r)
    return [(sample_id, times) for sample_id, times in ids.items() if times > 1]


def _dataset_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class LlavaDataset(Dataset):
    """A torch Dataset over a mixture of LLaVA-format datasets; images are read in `__getitem__`.

    Item `i` is the processor's encoding (`input_ids`, `labels`, `attention_mask`,
    `pixel_values`, and in the grid and video modes `image_sizes`, `image_num_crops`,
    `pixel_values_videos`, `video_num_frames`) plus `sample_id`, or `{"skipped": reason,
    "sample_id": id}` for a bad sample (see the module docstring). Records are parsed once, up
    front; nothing else is. `duplicate_ids` lists the ids that repeat within a dataset
    (dataset name, id, times); they are logged as a warning when the dataset is built.
    """

    def __init__(
        self, specs: Sequence[DatasetSpec], processor: LlavaKitProcessor, max_length: int | None, seed: int = 0
    ):
        if not processor.tokenizer.is_fast:
            raise ConfigError("LlavaDataset needs a fast tokenizer (labels are placed with character offsets)")
        self.specs = list(specs)
        self.processor = processor
        self.max_length = max_length
        self.seed = seed
        mixture = read_mixture(self.specs, seed)
        self._entries = mixture.entries
        self.duplicate_ids = mixture.duplicate_ids
        if mixture.duplicate_ids:
            logger.warning("training data: %s", mixture.duplicates_summary())
        self._modality_lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def sample_id(self, index: int) -> str:
        return self._entries[index].sample_id

    def dataset_name(self, index: int) -> str:
        return self.specs[self._entries[index].spec_index].name

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self._entries[index]
        spec = self.specs[entry.spec_index]
        try:
            encoded = encode_sample(entry.record, spec, self.processor, self.max_length)
        except BadSampleError as error:
            return {"skipped": error.reason, "sample_id": entry.sample_id}
        return {**encoded, "sample_id": entry.sample_id}

    @property
    def modality_lengths(self) -> list[int]:
        """Estimated lengths, positive for samples with images or videos and negative for text-only ones.

        Visual tokens are the processor's real counts (`estimate_visual_tokens`); in the grid
        modes that reads every image's header once, so the result is kept.
        """
        if self._modality_lengths is None:
            self._modality_lengths = [self._estimate_length(entry) for entry in self._entries]
        return list(self._modality_lengths)

    def _estimate_length(self, entry: MixtureEntry) -> int:
        spec = self.specs[entry.spec_index]
        visual = estimate_visual_tokens(
            entry.record, spec.images_root, self.processor, spec.videos_root, spec.allow_outside_paths
        )
        return estimate_length(entry.record, self.processor.num_image_tokens, visual)
