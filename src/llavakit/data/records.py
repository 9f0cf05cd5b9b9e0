"""LLaVA-format records: one reader and one validator for JSON / JSONL files, used by training and `data check`.

This module reads files and checks conversation records; `llavakit.data.formats` adds the other
record formats a dataset may hold (interleaved image-text documents, plain text) and picks the
format of each record. docs/data.md describes every format and how mixtures draw from datasets.

A record looks like the LLaVA releases' (`llava_v1_5_mix665k.json`, `blip_laion_cc_sbu_558k.json`):

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is in the picture?"},
                       {"from": "gpt", "value": "A bus."}]}

`image` is one path or a list of paths, relative to the dataset's image folder (one `<image>`
placeholder per image, in order; several images make a multi-image sample). `video` (as in
LLaVA-OneVision's data) is a video file or a folder of frames, or a list of them, relative to
the dataset's video folder (default: the image folder), one `<video>` placeholder each; it
needs a model with a `video_token_id`. A record with neither is text-only. Files are a JSON
list (`.json`) or one record per line (`.jsonl`), UTF-8.

Paths stay inside their folder: an absolute path or one with a `..` part is an `unsafe path`
unless the dataset sets `allow_outside_paths` (recipe key `data.datasets.N.allow_outside_paths`),
since LLaVA's data names images relative to the image folder and a path that leaves it is
either a mistake or a file the dataset's author should not reach. Links inside the folder are
followed (image folders are often assembled from links).

A file that cannot be read as a whole (missing, unknown extension, a `.json` that does not
parse or nests too deeply, no records at all) raises `DataError` naming it. Sample ids that
repeat within a dataset are not errors (LLaVA-style sets reuse an image's id for several
conversations) but are counted and reported by `data check` and logged by training, since
reports and predictions name samples by id.

Nothing is silently lost. Every record is checked the same way by `llavakit data check`
(`check_data`, all at once, with a report) and by training (`LlavaDataset.__getitem__`, lazily:
images and videos are decoded only when a sample is drawn; the length estimates that group
batches read image headers at most). A bad sample gets one reason of the form
`category: detail`, with category one of:

    malformed JSON, malformed record, malformed text, malformed turns, empty turn,
    unsafe path, <image> count mismatch, <video> count mismatch, missing image, corrupt image,
    missing video, corrupt video, over max length, unsupported, encoding failed, empty document

In training the sample comes back as `{"skipped": reason, "sample_id": id}`; the collators
drop it from the batch and list it under `skipped_samples`, so the trainer counts and reports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from PIL import Image

from llavakit.errors import ConfigError, DataError
from llavakit.processing.images import load_image
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.processing.templates import IMAGE_PLACEHOLDER, normalize_conversation
from llavakit.processing.video import FrameSampling, load_video

# A record that could not be read (a malformed JSONL line, a list item that is not an object)
# is kept in its place as {"id": ..., LOAD_ERROR_KEY: reason}, so it is counted and reported
# like any other bad sample instead of vanishing at load time.
LOAD_ERROR_KEY = "_load_error"
# A record read from a source that carries its images (a parquet column of bytes, a tar shard's
# members) holds under this key an object with `image_bytes(position) -> bytes | None`: the
# bytes of its `position`-th image, or None to read the named file from the image folder.
EMBEDDED_IMAGES_KEY = "_embedded_images"

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
VIDEO_PLACEHOLDER = "<video>"

# What a dataset's records are (`DatasetSpec.format`; None: detected per record, see `llavakit.data.formats`).
FORMATS = ("conversation", "interleaved", "text")
# Where a dataset's records come from (`DatasetSpec.source`; None: by path, see `llavakit.data.sources`).
SOURCES = ("llava", "hf", "shards")


class BadSampleError(ValueError):
    """A sample that cannot be trained on; `reason` is `category: detail` (no sample id)."""

    def __init__(self, category: str, detail: str):
        super().__init__(f"{category}: {detail}")
        self.reason = f"{category}: {detail}"


@dataclass
class DatasetSpec:
    """One dataset of a mixture.

    `image_folder`: where relative image paths start (default: the data file's folder, or the
    dataset's folder when it is one); images a source embeds are read from it instead.
    `video_folder`: where relative video paths start (default: the image folder).
    `fraction`: share of the records kept, drawn at random without replacement (seeded by the
    dataset's seed and position in the mixture), file order preserved.
    `weight`: the dataset's share of a weighted mixture's draws (normalised over the datasets;
    null: no weights, see `llavakit.data.dataset.mixture_draws`); it applies to the records
    `fraction` kept.
    `format`: `conversation`, `interleaved` or `text` (see `llavakit.data.formats`); null:
    detected per record.
    `response_format_prompt`: appended to every human turn after a newline (once).
    `name`: how reports call the dataset (default: the file name without extension).
    `allow_outside_paths`: accept absolute image and video paths and paths with `..` parts
    (off: such a sample is a bad sample, `unsafe path`).
    `source`: `llava` (JSON/JSONL), `hf` (a Hugging Face dataset: parquet/arrow folder or hub
    name) or `shards` (webdataset tar shards); null: by path (`llavakit.data.sources`).
    `columns`: for `hf`, LLaVA field -> column name (e.g. `{conversations: messages, image: images}`).
    """

    path: str | Path
    image_folder: str | Path | None = None
    fraction: float = 1.0
    response_format_prompt: str | None = None
    name: str | None = None
    video_folder: str | Path | None = None
    allow_outside_paths: bool = False
    weight: float | None = None
    format: str | None = None
    source: str | None = None
    columns: dict[str, str] | None = None

    def __post_init__(self):
        if not 0.0 < float(self.fraction) <= 1.0:
            raise ConfigError(f"dataset {self.path}: fraction must be in (0, 1], got {self.fraction}")
        if self.weight is not None and not (isinstance(self.weight, (int, float)) and 0 <= self.weight < math.inf):
            raise ConfigError(f"dataset {self.path}: weight must be a finite number >= 0, or None, got {self.weight!r}")
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(
                f"dataset {self.path}: format must be one of {', '.join(FORMATS)}, or None, got {self.format!r}"
            )
        if self.source is not None and self.source not in SOURCES:
            raise ConfigError(
                f"dataset {self.path}: source must be one of {', '.join(SOURCES)}, or None, got {self.source!r}"
            )
        if self.columns is not None and not (
            isinstance(self.columns, Mapping) and all(isinstance(v, str) for v in self.columns.values())
        ):
            raise ConfigError(f"dataset {self.path}: columns must map LLaVA fields to columns, got {self.columns!r}")
        if self.name is None:
            self.name = Path(str(self.path).rstrip("/")).stem

    @property
    def images_root(self) -> Path:
        if self.image_folder is not None:
            return Path(self.image_folder)
        path = Path(self.path)
        return path if path.is_dir() else path.parent  # a folder source (parquet, shards) holds its images

    @property
    def videos_root(self) -> Path:
        return Path(self.video_folder) if self.video_folder is not None else self.images_root


# ---- loading --------------------------------------------------------------------------------


def load_records(spec: DatasetSpec) -> list[dict[str, Any]]:
    """All records of `spec.path`, in file order (no downsampling).

    A file that is missing, has an unknown extension, holds no records, or (`.json`) does not
    parse as a list raises `DataError` naming it. A malformed JSONL line (bad JSON, not UTF-8,
    nested too deeply), or a list item that is not an object, does not raise: it becomes
    `{"id": "<file name>:<line or item>", LOAD_ERROR_KEY: reason}`, which validation reports
    as a bad sample, so one broken line never stops a run and is never silently dropped either.
    """
    records = list(iter_records(spec))
    if not records:
        raise DataError(f"dataset file {spec.path} holds no records")
    return records


def iter_records(spec: DatasetSpec) -> Iterator[dict[str, Any]]:
    """The records of `spec.path` one at a time (see `load_records`); a `.json` list is parsed item by
    item, so a compact index (`llavakit.data.index`) never holds the whole file parsed at once."""
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist" if not path.exists() else f"dataset {path} is not a file")
    if spec.image_folder is not None and not Path(spec.image_folder).is_dir():
        raise DataError(f"image folder {spec.image_folder} of dataset {path} is not a folder")
    if path.suffix == ".jsonl":
        return _jsonl_records(path)
    if path.suffix == ".json":
        return _json_records(path)
    raise DataError(f"dataset file {path} must end in .json (a list) or .jsonl (one record per line)")


def _jsonl_records(path: Path) -> Iterator[dict[str, Any]]:
    """One record (or a load-error marker) per non-blank line."""
    with path.open("rb") as lines:
        for number, data in enumerate(lines, start=1):
            if not data.strip():
                continue
            where = f"line {number} of {path}"
            try:
                record = json.loads(data.decode("utf-8-sig" if number == 1 else "utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
                reason = f"malformed JSON: {where}: {_json_problem(error)}"
                yield {"id": f"{path.name}:{number}", LOAD_ERROR_KEY: reason}
                continue
            yield _object_or_marker(record, f"{path.name}:{number}", where)


def _json_records(path: Path) -> Iterator[dict[str, Any]]:
    """The items of a `.json` list, each a record or a load-error marker, parsed one by one."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"dataset file {path} is not valid JSON: {_json_problem(error)}") from None
    done = 0
    try:
        for item in _list_items(text):
            yield _object_or_marker(item, f"{path.name}[{done}]", f"item {done} of {path}")
            done += 1
    except ValueError:  # not a well-formed list: the whole-text parse names the problem
        rest = _whole_list(text, path)[done:]
        for i, item in enumerate(rest, start=done):
            yield _object_or_marker(item, f"{path.name}[{i}]", f"item {i} of {path}")


def _whole_list(text: str, path: Path) -> list[Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise DataError(f"dataset file {path} is not valid JSON: {_json_problem(error)}") from None
    if not isinstance(data, list):
        raise DataError(f"dataset file {path} must hold a JSON list of records, got {type(data).__name__}")
    return data


def _list_items(text: str) -> Iterator[Any]:
    """A JSON list's items, each parsed on its own (never the whole list at once); `ValueError` when the
    text is not one well-formed list."""
    decoder = json.JSONDecoder()
    index = _skip_space(text, 0)
    if text[index : index + 1] != "[":
        raise ValueError("not a list")
    index = _skip_space(text, index + 1)
    if text[index : index + 1] == "]":
        index += 1
    else:
        while True:
            try:
                item, index = decoder.raw_decode(text, index)
            except (json.JSONDecodeError, RecursionError):
                raise ValueError("malformed item") from None
            yield item
            index = _skip_space(text, index)
            separator = text[index : index + 1]
            index = _skip_space(text, index + 1)
            if separator == "]":
                break
            if separator != ",":
                raise ValueError("expected , or ]")
    if _skip_space(text, index) != len(text):
        raise ValueError("text after the list")


def _skip_space(text: str, index: int) -> int:
    """The first position at or after `index` that is not JSON whitespace."""
    while index < len(text) and text[index] in " \t\n\r":
        index += 1
    return index


def _json_problem(error: Exception) -> str:
    """What is wrong with a piece of JSON, in words."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} (line {error.lineno}, column {error.colno})"
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 (byte 0x{error.object[error.start]:02x} at offset {error.start})"
    return "nested too deeply to read (RecursionError)"


def _object_or_marker(record: Any, fallback_id: str, where: str) -> dict[str, Any]:
    if isinstance(record, dict):
        return record
    reason = f"malformed record: {where} is a JSON {type(record).__name__}, not an object"
    return {"id": fallback_id, LOAD_ERROR_KEY: reason}


def sample_id_of(record: Mapping[str, Any], fallback: str) -> str:
    """The record's `id` as a string, or `fallback` (dataset name and position) when it has none."""
    value = record.get("id") if isinstance(record, Mapping) else None
    return fallback if value is None else printable(str(value))


def printable(text: str) -> str:
    """`text` with what cannot be written as UTF-8 (lone surrogates) escaped, so reports can print it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


def _record_paths(record: Mapping[str, Any], key: str, folder: str | Path, allow_outside: bool) -> list[Path]:
    value = record.get(key)
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise BadSampleError("malformed record", f"{key!r} must be a path or a list of paths, got {value!r}")
    return folder_paths(names, key, folder, allow_outside)


def folder_paths(names: Sequence[str], key: str, folder: str | Path, allow_outside: bool) -> list[Path]:
    """`names` as paths under `folder`; absolute paths and `..` parts are `unsafe path` unless `allow_outside`."""
    if not allow_outside:
        for name in names:
            _check_inside(PurePath(name), key, folder)
    return [Path(folder) / name for name in names]


def _check_inside(name: PurePath, key: str, folder: str | Path) -> None:
    """An absolute path, or one with a `..` part, leaves the dataset's folder."""
    if name.is_absolute() or ".." in name.parts:
        raise BadSampleError(
            "unsafe path",
            f"{key} path {str(name)!r} leaves the {key} folder {folder}; "
            "set allow_outside_paths on the dataset (data.datasets.N.allow_outside_paths) to allow it",
        )


def image_paths(record: Mapping[str, Any], image_folder: str | Path, allow_outside: bool = False) -> list[Path]:
    """The record's images as paths under `image_folder`; absolute paths and `..` need `allow_outside`."""
    return _record_paths(record, "image", image_folder, allow_outside)


def video_paths(record: Mapping[str, Any], video_folder: str | Path, allow_outside: bool = False) -> list[Path]:
    """The record's videos (files or frame folders) as paths under `video_folder`; absolute paths and
    `..` need `allow_outside`."""
    return _record_paths(record, "video", video_folder, allow_outside)


def turn_texts(conversation: list[dict[str, Any]]) -> list[str]:
    texts = []
    for turn in conversation:
        text = turn.get("value", turn.get("content"))
        if isinstance(text, list):
            parts = [part for part in text if isinstance(part, Mapping)]
            text = "\n".join(IMAGE_PLACEHOLDER if p.get("type") == "image" else str(p.get("text", "")) for p in parts)
        texts.append(text if isinstance(text, str) else "")
    return texts


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a parsed JSON value (keys too) with where it is, walked without recursion."""
    stack = [(where, value)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            yield where or "the record", value
        elif isinstance(value, Mapping):
            for key, item in value.items():
                yield f"key of {where or 'the record'}", str(key)
                stack.append((f"{where}.{key}" if where else str(key), item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{index}]", item) for index, item in enumerate(value))


def check_unicode(record: Mapping[str, Any]) -> None:
    """Text that is not valid Unicode (a lone surrogate such as JSON's `"\\ud800"`) cannot be tokenized."""
    for where, text in _strings(record):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            char = printable(error.object[error.start])
            raise BadSampleError("malformed text", f"{where} holds {char}, a lone surrogate, not a character") from None


def check_loaded(record: Any) -> None:
    """A record is a JSON object that was read whole (a load-error marker raises the reason it carries)."""
    if not isinstance(record, Mapping):
        raise BadSampleError("malformed record", f"a record must be a JSON object, got {type(record).__name__}")
    if LOAD_ERROR_KEY in record:
        category, _, detail = str(record[LOAD_ERROR_KEY]).partition(": ")
        raise BadSampleError(category, detail)


def _checked_conversation(record: Any, response_format_prompt: str | None) -> list[dict[str, Any]]:
    """The conversation to train on (prompt added), after the checks that need no file or tokenizer."""
    check_loaded(record)
    check_unicode(record)
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


def load_images(paths: list[Path], embedded: Any = None) -> list[Image.Image]:
    """The images decoded, or the first file's problem as `missing image` / `corrupt image`.

    `embedded`: the record's `EMBEDDED_IMAGES_KEY` value; an image it holds bytes for is decoded
    from them, the others are read from their paths.
    """
    images = []
    for position, path in enumerate(paths):
        data = embedded.image_bytes(position) if embedded is not None else None
        if data is not None:
            try:
                images.append(load_image(data, name=f"{path.name} (embedded)"))
            except ValueError as error:
                raise BadSampleError("corrupt image", str(error)) from None
            continue
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
    allow_outside_paths: bool = False,
) -> dict[str, Any]:
    """Check and encode one record; raises `BadSampleError` with the first problem found.

    Checks, in order: record and turn structure, text, paths (inside their folders unless
    `allow_outside_paths`), `<image>` / `<video>` counts against the
    images and videos (and that the processor takes videos), image files (exist, decode),
    video files or frame folders (exist, decode with the processor's frame sampling), then
    (with a processor) tokenization and `max_length`. Without a processor only the checks
    before tokenization run and an empty dict is returned. `video_folder` defaults to `image_folder`.
    """
    conversation = _checked_conversation(record, response_format_prompt)
    paths = image_paths(record, image_folder, allow_outside_paths)
    clips = video_paths(record, image_folder if video_folder is None else video_folder, allow_outside_paths)
    _check_placeholders(turn_texts(conversation), len(paths), len(clips), processor)
    images = load_images(paths, record.get(EMBEDDED_IMAGES_KEY))
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


def encode_sample(
    record: Any, spec: DatasetSpec, processor: LlavaKitProcessor | None, max_length: int | None
) -> dict[str, Any]:
    """`encode_record` with the folders, prompt and path policy of the dataset `spec`."""
    return encode_record(
        record,
        spec.images_root,
        processor,
        max_length,
        spec.response_format_prompt,
        spec.videos_root,
        spec.allow_outside_paths,
    )


def validate_record(
    record: Any,
    image_folder: str | Path,
    processor: LlavaKitProcessor | None,
    max_length: int | None,
    response_format_prompt: str | None = None,
    video_folder: str | Path | None = None,
    allow_outside_paths: bool = False,
) -> str | None:
    """Why `record` cannot be trained on (`category: detail`), or None when it is fine."""
    try:
        encode_record(
            record, image_folder, processor, max_length, response_format_prompt, video_folder, allow_outside_paths
        )
    except BadSampleError as error:
        return error.reason
    return None
