"""LLaVA-format datasets: loading, mixtures with downsampling, validation and bad-sample reports.

A record looks like the LLaVA releases' (`llava_v1_5_mix665k.json`, `blip_laion_cc_sbu_558k.json`):

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is in the picture?"},
                       {"from": "gpt", "value": "A bus."}]}

`image` is one path or a list of paths, relative to the dataset's image folder (one `<image>`
placeholder per image, in order; several images make a multi-image sample). `video` (as in
LLaVA-OneVision's data) is a video file or a folder of frames, or a list of them, relative to
the dataset's video folder (default: the image folder), one `<video>` placeholder each; it
needs a model with a `video_token_id`. A record with neither is text-only. Files are a JSON
list (`.json`) or one record per line (`.jsonl`).

Nothing is silently lost. Every record is checked the same way by `llavakit data check`
(`check_data`, all at once, with a report) and by training (`LlavaDataset.__getitem__`, lazily:
images and videos are decoded only when a sample is drawn; the length estimates that group
batches read image headers at most). A bad sample gets one reason of the form
`category: detail`, with category one of:

    malformed JSON, malformed record, malformed turns, empty turn, <image> count mismatch,
    <video> count mismatch, missing image, corrupt image, missing video, corrupt video,
    over max length, unsupported, encoding failed

In training the sample comes back as `{"skipped": reason, "sample_id": id}`; the collators
drop it from the batch and list it under `skipped_samples`, so the trainer counts and reports it.

Mixtures: a list of `DatasetSpec`s, each with a `fraction` (seeded random downsampling, as in
LLaVA-1.5's data-efficiency study) and an optional response-format prompt appended to every
human turn (LLaVA-1.5's "Answer the question using a single word or phrase." for short-answer
VQA sets).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch.utils.data import Dataset

from llavakit.processing.images import load_image
from llavakit.processing.processor import IGNORE_INDEX, LlavaKitProcessor
from llavakit.processing.templates import IMAGE_PLACEHOLDER, normalize_conversation
from llavakit.processing.video import FrameSampling, load_video

# A record that could not be read (a malformed JSONL line, a list item that is not an object)
# is kept in its place as {"id": ..., LOAD_ERROR_KEY: reason}, so it is counted and reported
# like any other bad sample instead of vanishing at load time.
LOAD_ERROR_KEY = "_load_error"

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
VIDEO_PLACEHOLDER = "<video>"
_EXIF_ORIENTATION = 0x0112

T = TypeVar("T")


class BadSampleError(ValueError):
    """A sample that cannot be trained on; `reason` is `category: detail` (no sample id)."""

    def __init__(self, category: str, detail: str):
        super().__init__(f"{category}: {detail}")
        self.reason = f"{category}: {detail}"


@dataclass
class DatasetSpec:
    """One dataset of a mixture.

    `image_folder`: where relative image paths start (default: the data file's folder).
    `video_folder`: where relative video paths start (default: the image folder).
    `fraction`: share of the records kept, drawn at random without replacement (seeded by the
    dataset's seed and position in the mixture), file order preserved.
    `response_format_prompt`: appended to every human turn after a newline (once).
    `name`: how reports call the dataset (default: the file name without extension).
    """

    path: str | Path
    image_folder: str | Path | None = None
    fraction: float = 1.0
    response_format_prompt: str | None = None
    name: str | None = None
    video_folder: str | Path | None = None

    def __post_init__(self):
        if not 0.0 < float(self.fraction) <= 1.0:
            raise ValueError(f"dataset {self.path}: fraction must be in (0, 1], got {self.fraction}")
        if self.name is None:
            self.name = Path(self.path).stem

    @property
    def images_root(self) -> Path:
        return Path(self.image_folder) if self.image_folder is not None else Path(self.path).parent

    @property
    def videos_root(self) -> Path:
        return Path(self.video_folder) if self.video_folder is not None else self.images_root


# ---- loading --------------------------------------------------------------------------------


def load_records(spec: DatasetSpec) -> list[dict[str, Any]]:
    """All records of `spec.path`, in file order (no downsampling).

    A file that is missing, has an unknown extension, or (`.json`) does not parse as a list
    raises ValueError naming it. A malformed JSONL line, or a list item that is not an object,
    does not raise: it becomes `{"id": "<file name>:<line or item>", LOAD_ERROR_KEY: reason}`,
    which validation reports as a bad sample, so one broken line never stops a run and is
    never silently dropped either.
    """
    path = Path(spec.path)
    if not path.is_file():
        raise ValueError(f"dataset file {path} does not exist")
    if path.suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    reason = f"malformed JSON: line {number} of {path}: {error.msg} (column {error.colno})"
                    records.append({"id": f"{path.name}:{number}", LOAD_ERROR_KEY: reason})
                    continue
                records.append(_object_or_marker(record, f"{path.name}:{number}", f"line {number} of {path}"))
        return records
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"dataset file {path} is not valid JSON: {error}") from error
        if not isinstance(data, list):
            raise ValueError(f"dataset file {path} must hold a JSON list of records, got {type(data).__name__}")
        return [_object_or_marker(item, f"{path.name}[{i}]", f"item {i} of {path}") for i, item in enumerate(data)]
    raise ValueError(f"dataset file {path} must end in .json (a list) or .jsonl (one record per line)")


def _object_or_marker(record: Any, fallback_id: str, where: str) -> dict[str, Any]:
    if isinstance(record, dict):
        return record
    reason = f"malformed record: {where} is a JSON {type(record).__name__}, not an object"
    return {"id": fallback_id, LOAD_ERROR_KEY: reason}


def downsample(records: Sequence[T], fraction: float, seed: int) -> list[T]:
    """`round(fraction * n)` records (at least one when there are any), drawn without replacement."""
    if fraction >= 1.0 or not records:
        return list(records)
    keep = max(1, round(fraction * len(records)))
    chosen = np.random.default_rng(seed).choice(len(records), size=keep, replace=False)
    return [records[i] for i in sorted(chosen.tolist())]


def sample_id_of(record: Mapping[str, Any], fallback: str) -> str:
    """The record's `id` as a string, or `fallback` (dataset name and position) when it has none."""
    value = record.get("id") if isinstance(record, Mapping) else None
    return fallback if value is None else str(value)


# ---- one record -----------------------------------------------------------------------------


def add_response_format_prompt(conversation: Sequence[Mapping[str, Any]], prompt: str | None) -> list[dict[str, Any]]:
    """A copy of `conversation` with `"\\n" + prompt` after every human turn that does not end with it."""
    turns = [dict(turn) if isinstance(turn, Mapping) else turn for turn in conversation]
    if not prompt:
        return turns
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        key = "value" if turn.get("from") == "human" else "content" if turn.get("role") == "user" else None
        text = turn.get(key) if key else None
        if isinstance(text, str) and not text.rstrip().endswith(prompt):
            turn[key] = f"{text}\n{prompt}"
        elif key == "content" and isinstance(text, list):
            texts = [part.get("text") for part in text if isinstance(part, Mapping) and part.get("type") == "text"]
            if not (texts and isinstance(texts[-1], str) and texts[-1].rstrip().endswith(prompt)):
                turn[key] = [*text, {"type": "text", "text": prompt}]
    return turns


def _record_paths(record: Mapping[str, Any], key: str, folder: str | Path) -> list[Path]:
    value = record.get(key)
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise BadSampleError("malformed record", f"{key!r} must be a path or a list of paths, got {value!r}")
    return [Path(folder) / name for name in names]


def image_paths(record: Mapping[str, Any], image_folder: str | Path) -> list[Path]:
    """The record's images as paths under `image_folder` (absolute paths are kept)."""
    return _record_paths(record, "image", image_folder)


def video_paths(record: Mapping[str, Any], video_folder: str | Path) -> list[Path]:
    """The record's videos (files or frame folders) as paths under `video_folder` (absolute paths are kept)."""
    return _record_paths(record, "video", video_folder)


def _turn_texts(conversation: list[dict[str, Any]]) -> list[str]:
    texts = []
    for turn in conversation:
        text = turn.get("value", turn.get("content"))
        if isinstance(text, list):
            parts = [part for part in text if isinstance(part, Mapping)]
            text = "\n".join(IMAGE_PLACEHOLDER if p.get("type") == "image" else str(p.get("text", "")) for p in parts)
        texts.append(text if isinstance(text, str) else "")
    return texts


def _checked_conversation(record: Any, response_format_prompt: str | None) -> list[dict[str, Any]]:
    """The conversation to train on (prompt added), after the checks that need no file or tokenizer."""
    if not isinstance(record, Mapping):
        raise BadSampleError("malformed record", f"a record must be a JSON object, got {type(record).__name__}")
    if LOAD_ERROR_KEY in record:
        category, _, detail = str(record[LOAD_ERROR_KEY]).partition(": ")
        raise BadSampleError(category, detail)
    conversation = record.get("conversations")
    if not isinstance(conversation, list):
        raise BadSampleError("malformed turns", "the record has no 'conversations' list")
    try:
        turns = normalize_conversation(conversation)
    except ValueError as error:
        raise BadSampleError("malformed turns", str(error)) from None
    for index, turn in enumerate(turns):
        if not turn.text.strip():
            raise BadSampleError("empty turn", f"message {index} ({turn.role}) has no text")
    if not any(turn.role == "assistant" for turn in turns):
        raise BadSampleError("malformed turns", "the conversation has no gpt answer to learn from")
    return add_response_format_prompt(conversation, response_format_prompt)


def _load_images(paths: list[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        if not path.is_file():
            raise BadSampleError("missing image", f"{path} does not exist")
        try:
            images.append(load_image(path))
        except ValueError as error:
            raise BadSampleError("corrupt image", str(error)) from None
    return images


def _load_videos(paths: list[Path], sampling: FrameSampling) -> list[list[Image.Image]]:
    """Each video's sampled frames, decoded here (as images are) so a bad file is a counted skip."""
    videos = []
    for path in paths:
        if not path.exists():
            raise BadSampleError("missing video", f"{path} does not exist")
        try:
            videos.append(load_video(path, sampling))
        except ValueError as error:
            raise BadSampleError("corrupt video", str(error)) from None
    return videos


def _has_video_layout(processor: LlavaKitProcessor | None) -> bool:
    return processor is not None and processor.video is not None


def _check_placeholders(texts: list[str], images: int, videos: int, processor: LlavaKitProcessor | None) -> None:
    """One `<image>` per image and one `<video>` per video; videos need a model that takes them.

    `<video>` is counted only where it can be a placeholder (a video record, or a processor
    with a video layout); elsewhere it is plain text, as the processor reads it.
    """
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for text in texts)
    if placeholders != images:
        raise BadSampleError(
            "<image> count mismatch", f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {images} image(s)"
        )
    if videos and processor is not None and processor.video is None:
        raise BadSampleError("unsupported", "video samples need a model with a video_token_id")
    if videos or _has_video_layout(processor):
        token = processor.video_token if _has_video_layout(processor) else VIDEO_PLACEHOLDER
        placeholders = sum(text.count(token) for text in texts)
        if placeholders != videos:
            raise BadSampleError(
                "<video> count mismatch", f"{placeholders} {token} placeholder(s) but {videos} video(s)"
            )


def encode_record(
    record: Any,
    image_folder: str | Path,
    processor: LlavaKitProcessor | None,
    max_length: int | None,
    response_format_prompt: str | None = None,
    video_folder: str | Path | None = None,
) -> dict[str, Any]:
    """Check and encode one record; raises `BadSampleError` with the first problem found.

    Checks, in order: record and turn structure, `<image>` / `<video>` counts against the
    images and videos (and that the processor takes videos), image files (exist, decode),
    video files or frame folders (exist, decode with the processor's frame sampling), then
    (with a processor) tokenization and `max_length`. Without a processor only the checks
    before tokenization run and an empty dict is returned. `video_folder` defaults to `image_folder`.
    """
    conversation = _checked_conversation(record, response_format_prompt)
    paths = image_paths(record, image_folder)
    clips = video_paths(record, image_folder if video_folder is None else video_folder)
    _check_placeholders(_turn_texts(conversation), len(paths), len(clips), processor)
    images = _load_images(paths)
    sampling = processor.video.sampling if _has_video_layout(processor) else FrameSampling()
    videos = _load_videos(clips, sampling)
    if processor is None:
        return {}
    try:
        encoded = processor.encode_conversation(conversation, images=images, videos=videos)
    except ValueError as error:
        raise BadSampleError("encoding failed", str(error)) from None
    length = int(encoded["input_ids"].shape[0])
    if max_length is not None and length > max_length:
        raise BadSampleError("over max length", f"{length} tokens > max_length={max_length}")
    return encoded


def validate_record(
    record: Any,
    image_folder: str | Path,
    processor: LlavaKitProcessor | None,
    max_length: int | None,
    response_format_prompt: str | None = None,
    video_folder: str | Path | None = None,
) -> str | None:
    """Why `record` cannot be trained on (`category: detail`), or None when it is fine."""
    try:
        encode_record(record, image_folder, processor, max_length, response_format_prompt, video_folder)
    except BadSampleError as error:
        return error.reason
    return None


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
    words = sum(len(text.split()) for text in _turn_texts(turns))
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
    record: Any, image_folder: str | Path, processor: LlavaKitProcessor, video_folder: str | Path | None = None
) -> int:
    """The record's `<image>` and `<video>` tokens as `processor` will write them, without decoding.

    Grid modes: each image's grid token count from its header size (base-only for the images
    of a multi-image sample when the layout says so; an unreadable image counts as base-only).
    Videos: the tokens of `max_frames` frames, the most the processor's sampling keeps.
    """
    if not isinstance(record, Mapping):
        return 0
    try:
        images = image_paths(record, image_folder)
        videos = video_paths(record, image_folder if video_folder is None else video_folder)
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
class _Entry:
    spec_index: int
    sample_id: str
    record: Any


def _mixture(specs: Sequence[DatasetSpec], seed: int) -> tuple[list[_Entry], list[int]]:
    """Entries of every dataset after downsampling, and each dataset's record count before it."""
    if not specs:
        raise ValueError("a dataset mixture needs at least one DatasetSpec")
    entries, totals = [], []
    for index, spec in enumerate(specs):
        records = load_records(spec)
        totals.append(len(records))
        numbered = [(sample_id_of(r, f"{spec.name}#{i}"), r) for i, r in enumerate(records)]
        kept = downsample(numbered, float(spec.fraction), seed=_dataset_seed(seed, index))
        entries += [_Entry(index, sample_id, record) for sample_id, record in kept]
    return entries, totals


def _dataset_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class LlavaDataset(Dataset):
    """A torch Dataset over a mixture of LLaVA-format datasets; images are read in `__getitem__`.

    Item `i` is the processor's encoding (`input_ids`, `labels`, `attention_mask`,
    `pixel_values`, and in the grid and video modes `image_sizes`, `image_num_crops`,
    `pixel_values_videos`, `video_num_frames`) plus `sample_id`, or `{"skipped": reason,
    "sample_id": id}` for a bad sample (see the module docstring). Records are parsed once, up
    front; nothing else is.
    """

    def __init__(
        self, specs: Sequence[DatasetSpec], processor: LlavaKitProcessor, max_length: int | None, seed: int = 0
    ):
        if not processor.tokenizer.is_fast:
            raise ValueError("LlavaDataset needs a fast tokenizer (labels are placed with character offsets)")
        self.specs = list(specs)
        self.processor = processor
        self.max_length = max_length
        self.seed = seed
        self._entries, self.records_per_dataset = _mixture(self.specs, seed)
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
            encoded = encode_record(
                entry.record,
                spec.images_root,
                self.processor,
                self.max_length,
                spec.response_format_prompt,
                spec.videos_root,
            )
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

    def _estimate_length(self, entry: _Entry) -> int:
        spec = self.specs[entry.spec_index]
        visual = estimate_visual_tokens(entry.record, spec.images_root, self.processor, spec.videos_root)
        return estimate_length(entry.record, self.processor.num_image_tokens, visual)


# ---- the report -----------------------------------------------------------------------------


@dataclass
class DatasetStats:
    """Counts for one dataset; images and tokens are those of its good samples."""

    name: str
    path: str
    records: int
    samples: int = 0
    good: int = 0
    images: int = 0
    videos: int = 0
    text_only: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    longest: int = 0

    @property
    def bad(self) -> int:
        return self.samples - self.good


@dataclass
class DataReport:
    """What `llavakit data check` prints: per-dataset counts and every bad sample with its reason."""

    datasets: list[DatasetStats]
    bad_samples: list[tuple[str, str]] = field(default_factory=list)
    max_length: int | None = None
    tokens_counted: bool = True

    def _total(self, name: str) -> int:
        return sum(getattr(stats, name) for stats in self.datasets)

    @property
    def num_samples(self) -> int:
        return self._total("samples")

    @property
    def num_good(self) -> int:
        return self._total("good")

    @property
    def num_images(self) -> int:
        return self._total("images")

    @property
    def num_videos(self) -> int:
        return self._total("videos")

    @property
    def num_text_only(self) -> int:
        return self._total("text_only")

    @property
    def num_tokens(self) -> int:
        return self._total("tokens")

    @property
    def num_answer_tokens(self) -> int:
        return self._total("answer_tokens")

    @property
    def num_bad(self) -> int:
        return len(self.bad_samples)

    def reasons(self) -> Counter:
        """Bad samples per category (the part of each reason before the first colon)."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.bad_samples)

    def render(self, width: int = 120) -> str:
        """The report as text tables (rich)."""
        console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
        counts = Table(title="datasets")
        columns = ["dataset", "records", "samples", "good", "bad", "images", "videos", "text-only"]
        if self.tokens_counted:
            columns += ["tokens", "answer tokens", "longest"]
        for column in columns:
            counts.add_column(column, justify="left" if column == "dataset" else "right")
        rows = [
            (
                s.name,
                s.records,
                s.samples,
                s.good,
                s.bad,
                s.images,
                s.videos,
                s.text_only,
                s.tokens,
                s.answer_tokens,
                s.longest,
            )
            for s in self.datasets
        ]
        if len(self.datasets) > 1:
            longest = max((s.longest for s in self.datasets), default=0)
            rows.append(
                (
                    "total",
                    self._total("records"),
                    self.num_samples,
                    self.num_good,
                    self._total("bad"),
                    self.num_images,
                    self.num_videos,
                    self.num_text_only,
                    self.num_tokens,
                    self.num_answer_tokens,
                    longest,
                )
            )
        for row in rows:
            counts.add_row(*(Text(str(value)) for value in row[: len(columns)]))
        console.print(counts)
        limit = f", max_length={self.max_length}" if self.max_length is not None else ""
        if not self.bad_samples:
            console.print(f"no bad samples{limit}", markup=False, highlight=False)
            return console.file.getvalue()
        console.print(f"{self.num_bad} bad sample(s){limit}", markup=False, highlight=False)
        for category, count in sorted(self.reasons().items()):
            console.print(f"  {category}: {count}", markup=False, highlight=False)
        bad = Table(title="bad samples")
        bad.add_column("sample id", overflow="fold")
        bad.add_column("reason", overflow="fold")
        for sample_id, reason in self.bad_samples:
            bad.add_row(Text(sample_id), Text(reason))  # Text: ids like `a.json[3]` are not markup
        console.print(bad)
        return console.file.getvalue()

    def __str__(self) -> str:
        return self.render()


def check_data(
    specs: Sequence[DatasetSpec], processor: LlavaKitProcessor | None, max_length: int | None, seed: int = 0
) -> DataReport:
    """Check every sample of the mixture as training would, and count samples, images, videos and tokens.

    Without a processor, structure, images and videos are still checked (videos sampled with
    the default `FrameSampling`) but tokens are not counted (and `max_length` cannot be checked).
    """
    specs = list(specs)
    entries, totals = _mixture(specs, seed)
    stats = [DatasetStats(spec.name, str(spec.path), total) for spec, total in zip(specs, totals)]
    report = DataReport(stats, max_length=max_length, tokens_counted=processor is not None)
    for entry in entries:
        spec, counts = specs[entry.spec_index], stats[entry.spec_index]
        counts.samples += 1
        try:
            encoded = encode_record(
                entry.record, spec.images_root, processor, max_length, spec.response_format_prompt, spec.videos_root
            )
        except BadSampleError as error:
            report.bad_samples.append((entry.sample_id, error.reason))
            continue
        counts.good += 1
        images = len(image_paths(entry.record, spec.images_root))
        videos = len(video_paths(entry.record, spec.videos_root))
        counts.images += images
        counts.videos += videos
        counts.text_only += images + videos == 0
        if encoded:
            length = int(encoded["input_ids"].shape[0])
            counts.tokens += length
            counts.answer_tokens += int((encoded["labels"] != IGNORE_INDEX).sum())
            counts.longest = max(counts.longest, length)
    return report


__all__ = [
    "LOAD_ERROR_KEY",
    "SHORT_ANSWER_PROMPT",
    "VIDEO_PLACEHOLDER",
    "BadSampleError",
    "DataReport",
    "DatasetSpec",
    "DatasetStats",
    "LlavaDataset",
    "add_response_format_prompt",
    "check_data",
    "downsample",
    "encode_record",
    "estimate_length",
    "estimate_visual_tokens",
    "image_header_size",
    "image_paths",
    "load_records",
    "validate_record",
    "video_paths",
]
