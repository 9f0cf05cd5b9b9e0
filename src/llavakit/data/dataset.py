"""Datasets and mixtures: the records of several files as one torch Dataset.

Each dataset of a mixture (`DatasetSpec`) holds conversations, interleaved image-text documents
or plain text (`llavakit.data.formats`), may keep a seeded `fraction` of its records (LLaVA-1.5's
data-efficiency study) and a response-format prompt for every human turn (LLaVA-1.5's "Answer
the question using a single word or phrase."), and may take a sampling `weight` (MM1's
captions : interleaved : text = 4 : 4 : 1).

A weighted mixture draws `mixture_size` samples per epoch (default: the records of all its
datasets after `fraction`), each dataset its weight's share (`apportion`): a dataset smaller
than its share is repeated (every record the same number of times, give or take one), a larger
one is downsampled without replacement (`repeat_draws`). Like HF datasets'
`interleave_datasets(probabilities=...)` on map-style datasets, the draw is made once from
`data.seed`, so the dataset is an ordinary map-style one of `mixture_size` items: the Trainer's
sampler (or the modality-grouped one) shuffles it per (seed, epoch), and a resumed run skips the
batches it has seen and draws the rest exactly as an uninterrupted run. Without weights (and
without `mixture_size`) every kept record is drawn once, as before weights existed.

Records are read and checked by `llavakit.data.records` and `llavakit.data.formats`; images and
videos are decoded only when a sample is drawn, and the length estimates that group batches
read image headers at most. docs/data.md has the formats and the mixture rules with examples.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from llavakit.data.formats import encode_dataset_sample, record_format, record_words, visual_count, visual_paths
from llavakit.data.index import CompactStrings, MixtureEntries, MixtureEntry
from llavakit.data.records import (
    EMBEDDED_IMAGES_KEY,
    LOAD_ERROR_KEY,
    BadSampleError,
    DatasetSpec,
    sample_id_of,
)
from llavakit.data.sources import load_source_records
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


def estimate_length(
    record: Any, num_image_tokens: int, visual_tokens: int | None = None, fmt: str | None = None
) -> int:
    """Cheap length for grouping, without decoding: words + visual tokens; negative if text-only.

    `visual_tokens`: the record's image and video tokens when the caller knows them
    (`estimate_visual_tokens`); default `num_image_tokens` per image or video. `fmt`: the
    record's format (default: detected). Never 0 (the sign carries the modality), so
    unreadable records count as 1-token text.
    """
    fmt = record_format(record, fmt)
    words = record_words(record, fmt)
    if words is None:
        return -1
    count = visual_count(record, fmt)
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


def image_header_size(path: str | Path | io.BytesIO) -> tuple[int, int] | None:
    """An image's (height, width) as `load_image` will give it (EXIF rotation applied), read from
    its header only: PIL opens files lazily, so no pixel is decoded. None when unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = _orientation(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _image_tokens(processor: LlavaKitProcessor, path: Path, base_only: bool, embedded: bytes | None = None) -> int:
    if processor.highres is None or base_only:
        return processor.image_token_count(base_only=True)
    size = image_header_size(path if embedded is None else io.BytesIO(embedded))
    return processor.image_token_count(size) if size is not None else processor.image_token_count(base_only=True)


def estimate_visual_tokens(
    record: Any,
    image_folder: str | Path,
    processor: LlavaKitProcessor,
    video_folder: str | Path | None = None,
    allow_outside_paths: bool = False,
    fmt: str | None = None,
) -> int:
    """The record's `<image>` and `<video>` tokens as `processor` will write them, without decoding.

    Grid modes: each image's grid token count from its header size (base-only for the images
    of a multi-image sample or document when the layout says so; an unreadable image counts as
    base-only). Videos: the tokens of `max_frames` frames, the most the processor's sampling keeps.
    """
    videos_root = image_folder if video_folder is None else video_folder
    fmt = record_format(record, fmt)
    try:
        images, videos = visual_paths(record, fmt, image_folder, videos_root, allow_outside_paths)
    except BadSampleError:
        return 0
    highres = processor.highres
    base_only = highres is not None and highres.multi_image_base_only and len(images) > 1
    embedded = record.get(EMBEDDED_IMAGES_KEY) if isinstance(record, Mapping) else None
    header = embedded is not None and highres is not None and not base_only  # bytes are read only when needed
    tokens = sum(
        _image_tokens(processor, path, base_only, embedded.image_bytes(i) if header else None)
        for i, path in enumerate(images)
    )
    if videos:
        video = processor.video
        per_video = video.num_tokens(video.sampling.max_frames) if video is not None else processor.num_image_tokens
        tokens += len(videos) * per_video
    return tokens


# ---- the mixture ----------------------------------------------------------------------------


@dataclass
class Mixture:
    """A mixture's records and its epoch's draws.

    `entries`: the records of every dataset after `fraction`, in dataset and file order (a
    compact `MixtureEntries`: records are read from their source when an entry is taken);
    `totals`: each dataset's record count before `fraction`; `draws`: the entries one epoch
    draws, as indices into `entries` (each dataset's draws together, in file order; the sampler
    shuffles them); `weighted`: whether weights or a size made the draws; `duplicate_ids`: the
    sample ids that repeat within a dataset, (dataset name, id, times), in file order.
    """

    entries: MixtureEntries
    totals: list[int]
    duplicate_ids: list[tuple[str, str, int]] = field(default_factory=list)
    draws: list[int] = field(default_factory=list)
    weighted: bool = False

    def pool_sizes(self, datasets: int) -> list[int]:
        """Records per dataset after `fraction`: what the draws are made from."""
        return self.entries.pool_sizes(datasets)

    def draw_counts(self, datasets: int) -> list[int]:
        """Draws per dataset in one epoch."""
        counts = [0] * datasets
        for index in self.draws:
            counts[self.entries.spec_index(index)] += 1
        return counts

    def composition(self, names: Sequence[str]) -> str:
        """One line: each dataset's draws per epoch, its records and how often each is drawn on average."""
        sizes, counts = self.pool_sizes(len(names)), self.draw_counts(len(names))
        total = max(sum(counts), 1)
        return ", ".join(
            f"{name}: {count} draws ({count / total:.1%}) of {size} records (x{count / size:.2f})"
            for name, size, count in zip(names, sizes, counts)
        )

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


# ---- weighted draws -------------------------------------------------------------------------


def apportion(weights: Sequence[float], total: int) -> list[int]:
    """Whole counts adding up to `total` in the proportions of `weights` (largest remainders; ties to the earlier).

    Every count is within one sample of its exact share, so measured shares match the weights
    as closely as whole samples allow; a zero weight gets nothing.
    """
    norm = math.fsum(weights)
    exact = [total * weight / norm for weight in weights]
    counts = [math.floor(share) for share in exact]
    order = sorted((i for i, weight in enumerate(weights) if weight > 0), key=lambda i: (counts[i] - exact[i], i))
    for index in order[: total - sum(counts)]:
        counts[index] += 1
    return counts


def repeat_draws(size: int, count: int, seed: Sequence[int]) -> list[int]:
    """`count` positions in `range(size)`, sorted: each `count // size` times, and `count % size` distinct
    ones (drawn without replacement, seeded) once more, so a repeated dataset is repeated evenly."""
    if count == 0:
        return []
    full, rest = divmod(count, size)
    times = np.full(size, full, dtype=np.int64)
    if rest:
        times[np.random.default_rng(list(seed)).choice(size, size=rest, replace=False)] += 1
    return np.repeat(np.arange(size), times).tolist()


def mixture_weights(specs: Sequence[DatasetSpec]) -> list[float] | None:
    """The datasets' weights, or None when none has one; all or none must have one, and not all 0."""
    given = [spec.weight is not None for spec in specs]
    if not any(given):
        return None
    if not all(given):
        missing = [f"{spec.name} (data.datasets.{i}.weight)" for i, spec in enumerate(specs) if spec.weight is None]
        named = ", ".join(missing)
        raise ConfigError(
            f"dataset mixture: some datasets have a weight but {named} has none; give every dataset a weight, or none"
        )
    weights = [float(spec.weight) for spec in specs]
    if not math.fsum(weights) > 0:
        raise ConfigError("dataset mixture: every data.datasets.N.weight is 0; at least one must be > 0")
    return weights


def mixture_draws(sizes: Sequence[int], weights: Sequence[float], total: int, seed: int) -> list[list[int]]:
    """Per dataset, the positions (in its kept records) that one epoch of `total` samples draws.

    A pure function of its arguments: the same mixture and seed always draw the same samples.
    """
    counts = apportion(weights, total)
    return [repeat_draws(size, count, (seed, index, 1)) for index, (size, count) in enumerate(zip(sizes, counts))]


def _check_mixture_size(mixture_size: int | None) -> None:
    if mixture_size is not None and (isinstance(mixture_size, bool) or not isinstance(mixture_size, int)):
        raise ConfigError(f"data.mixture_size must be a whole number >= 1, or null, got {mixture_size!r}")
    if mixture_size is not None and mixture_size < 1:
        raise ConfigError(f"data.mixture_size must be a whole number >= 1, or null, got {mixture_size}")


def read_mixture(specs: Sequence[DatasetSpec], seed: int, mixture_size: int | None = None) -> Mixture:
    """Entries of every dataset after `fraction`, each dataset's record count before it, and one epoch's draws.

    Without weights and `mixture_size` every entry is drawn once, in order. With weights, each
    dataset gets its weight's share of `mixture_size` draws (default: the number of entries);
    with `mixture_size` alone, each dataset keeps its share of the entries (all scaled alike).
    """
    if not specs:
        raise ConfigError("a dataset mixture needs at least one DatasetSpec")
    _check_mixture_size(mixture_size)
    weights = mixture_weights(specs)
    mixture = Mixture(MixtureEntries(), [])
    for index, spec in enumerate(specs):
        records = load_source_records(spec)
        ids, repeated = _sample_ids(records, spec.name)
        mixture.totals.append(len(records))
        mixture.duplicate_ids += [(spec.name, sample_id, times) for sample_id, times in repeated]
        kept = downsample(range(len(records)), float(spec.fraction), seed=_dataset_seed(seed, index))
        mixture.entries.add(records, kept, ids)
    mixture.weighted = weights is not None or mixture_size is not None
    if not mixture.weighted:
        mixture.draws = list(range(len(mixture.entries)))
        return mixture
    sizes = mixture.pool_sizes(len(specs))
    total = len(mixture.entries) if mixture_size is None else mixture_size
    offsets = np.cumsum([0, *sizes]).tolist()
    positions = mixture_draws(sizes, weights if weights is not None else sizes, total, seed)
    mixture.draws = [offsets[index] + position for index, drawn in enumerate(positions) for position in drawn]
    return mixture


def _sample_ids(records: Sequence[Mapping[str, Any]], name: str) -> tuple[CompactStrings, list[tuple[str, int]]]:
    """Every record's sample id (its own, else `name#position`), and the ids that records give themselves
    more than once (load-error markers aside), in file order; one pass, one record parsed at a time."""
    counts: Counter = Counter()

    def ids() -> Iterator[bytes]:
        for position, record in enumerate(records):
            sample_id = sample_id_of(record, f"{name}#{position}")
            if record.get("id") is not None and LOAD_ERROR_KEY not in record:
                counts[sample_id] += 1
            yield sample_id.encode("utf-8", "surrogatepass")

    compact = CompactStrings.build(ids())
    return compact, [(sample_id, times) for sample_id, times in counts.items() if times > 1]


def _dataset_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class LlavaDataset(Dataset):
    """A torch Dataset over a mixture of datasets (conversations, documents, text); images are read in `__getitem__`.

    Item `i` is draw `i` of the mixture's epoch (`Mixture.draws`; without weights, record `i`):
    the processor's encoding (`input_ids`, `labels`, `attention_mask`, `pixel_values`, and in
    the grid and video modes `image_sizes`, `image_num_crops`, `pixel_values_videos`,
    `video_num_frames`) plus `sample_id`, or `{"skipped": reason, "sample_id": id}` for a bad
    sample (see the module docstring). A record drawn several times keeps its sample id.
    Records are parsed once, up front; nothing else is. `mixture_size`: draws per epoch of a
    weighted mixture (see `read_mixture`). `duplicate_ids` lists the ids that repeat within a
    dataset (dataset name, id, times); they are logged as a warning when the dataset is built,
    and a weighted mixture's composition is logged too.
    """

    def __init__(
        self,
        specs: Sequence[DatasetSpec],
        processor: LlavaKitProcessor,
        max_length: int | None,
        seed: int = 0,
        mixture_size: int | None = None,
    ):
        if not processor.tokenizer.is_fast:
            raise ConfigError("LlavaDataset needs a fast tokenizer (labels are placed with character offsets)")
        self.specs = list(specs)
        self.processor = processor
        self.max_length = max_length
        self.seed = seed
        self.mixture = read_mixture(self.specs, seed, mixture_size)
        self._entries = self.mixture.entries
        self._draws = self.mixture.draws
        self.duplicate_ids = self.mixture.duplicate_ids
        if self.mixture.duplicate_ids:
            logger.warning("training data: %s", self.mixture.duplicates_summary())
        if self.mixture.weighted:
            logger.info("training mixture per epoch: %s", self.mixture.composition([s.name for s in self.specs]))
        self._entry_lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self._draws)

    def _entry(self, index: int) -> MixtureEntry:
        return self._entries[self._draws[index]]

    def sample_id(self, index: int) -> str:
        return self._entries.sample_id(self._draws[index])

    def dataset_name(self, index: int) -> str:
        return self.specs[self._entries.spec_index(self._draws[index])].name

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self._entry(index)
        spec = self.specs[entry.spec_index]
        try:
            encoded = encode_dataset_sample(entry.record, spec, self.processor, self.max_length)
        except BadSampleError as error:
            return {"skipped": error.reason, "sample_id": entry.sample_id}
        return {**encoded.features, "sample_id": entry.sample_id}

    @property
    def modality_lengths(self) -> list[int]:
        """Estimated lengths of the items, positive for samples with images or videos and negative for text-only ones.

        Visual tokens are the processor's real counts (`estimate_visual_tokens`); in the grid
        modes that reads every image's header once (once per record, however often it is
        drawn), so the result is kept.
        """
        if self._entry_lengths is None:
            self._entry_lengths = [self._estimate_length(entry) for entry in self._entries]
        return [self._entry_lengths[index] for index in self._draws]

    def _estimate_length(self, entry: MixtureEntry) -> int:
        spec = self.specs[entry.spec_index]
        fmt = record_format(entry.record, spec.format)
        visual = estimate_visual_tokens(
            entry.record, spec.images_root, self.processor, spec.videos_root, spec.allow_outside_paths, fmt
        )
        return estimate_length(entry.record, self.processor.num_image_tokens, visual, fmt)
