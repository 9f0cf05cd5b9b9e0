"""Record formats: LLaVA conversations, interleaved image-text documents and plain text, behind one encoder.

MM1 pretrains on captions, interleaved image-text documents and text-only corpora; a dataset of
a mixture holds one of these (`DatasetSpec.format`), or, left null, each record's format is
detected from its keys:

* `conversation`: a record with `conversations` (the LLaVA format, `llavakit.data.records`);
  loss on the answers, through the conversation template (captions under `plain` too);
* `interleaved`: a web document, in OBELICS's form (`texts` and `images`, lists of one length
  with exactly one of the two non-null at each index) or MMC4's (`text_list`, and
  `image_info` entries with `image_name` and `matched_text_index`: each image goes before its
  matched sentence, as OpenFlamingo places them); image paths are relative to the image folder;
* `text`: `{"text": ...}`, a text-only corpus line.

Documents and text use no template: their parts become one text (OBELICS paragraphs joined by a
blank line, MMC4 sentences by a space; blank parts dropped), each image its `<image>` expansion
at its place; the tokenizer adds its BOS and the processor its EOS; labels are every text token
(`LlavaKitProcessor.encode_document`). Detection, in order: `conversations` -> conversation,
`texts` / `images` / `text_list` -> interleaved, `text` -> text, else conversation (whose checks
then report what is missing).

A document longer than `max_length` is cut there (`truncate_document`: never inside an image's
tokens, the images after the cut dropped), as web-document pretraining does, and `data check`
counts the cut tokens; it is a bad sample (`over max length`) only when the cut leaves no text
to learn. Other bad documents: `malformed record` (missing or ill-typed lists, a segment with
both or neither of text and image, a `matched_text_index` that is not a sentence),
`empty document` (no text), `<image>` / `<video>` count mismatch (text that holds the
placeholder token), and the image checks of conversations (`unsafe path`, `missing image`,
`corrupt image`). docs/data.md shows each format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavakit.data.records import (
    EMBEDDED_IMAGES_KEY,
    BadSampleError,
    DatasetSpec,
    check_loaded,
    check_unicode,
    encode_sample,
    folder_paths,
    image_paths,
    load_images,
    turn_texts,
    video_paths,
)
from llavakit.processing.processor import IGNORE_INDEX, LlavaKitProcessor
from llavakit.processing.templates import IMAGE_PLACEHOLDER

OBELICS_SEPARATOR = "\n\n"  # between two text segments (paragraphs) of an OBELICS document
MMC4_SEPARATOR = " "  # between two sentences of an MMC4 document
_INTERLEAVED_KEYS = ("texts", "images", "text_list")


@dataclass
class Document:
    """A document in reading order: `parts` holds text, or None where the next of `images` (paths) goes."""

    parts: list[str | None] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def add_text(self, text: str, separator: str) -> None:
        """Blank text carries nothing to learn; text after text joins it with `separator`."""
        if not text.strip():
            return
        if self.parts and isinstance(self.parts[-1], str):
            self.parts[-1] = self.parts[-1] + separator + text
        else:
            self.parts.append(text)

    def add_image(self, name: str) -> None:
        self.parts.append(None)
        self.images.append(name)

    @property
    def texts(self) -> list[str]:
        return [part for part in self.parts if part is not None]


@dataclass
class EncodedSample:
    """One record, checked and encoded: what the collators batch (`features`, empty without a processor),
    its format, the images and videos it names, and the tokens a cut at `max_length` dropped."""

    format: str
    features: dict[str, Any]
    images: int = 0
    videos: int = 0
    truncated_tokens: int = 0


def record_format(record: Any, declared: str | None = None) -> str:
    """The dataset's declared format, else the one the record's keys show (see the module docstring)."""
    if declared is not None:
        return declared
    if isinstance(record, Mapping) and "conversations" not in record:
        if any(key in record for key in _INTERLEAVED_KEYS):
            return "interleaved"
        if "text" in record:
            return "text"
    return "conversation"


def _malformed(detail: str) -> BadSampleError:
    return BadSampleError("malformed record", detail)


def _obelics_segment(document: Document, index: int, text: Any, image: Any) -> None:
    if (text is None) == (image is None):
        which = "both a text and an image" if text is not None else "neither a text nor an image"
        raise _malformed(f"segment {index} holds {which}; each holds exactly one (OBELICS)")
    if image is not None:
        if not isinstance(image, str) or not image:
            raise _malformed(f"segment {index}: an image must be a path in the image folder, got {image!r}")
        document.add_image(image)
    elif not isinstance(text, str):
        raise _malformed(f"segment {index}: a text must be a string, got {type(text).__name__}")
    else:
        document.add_text(text, OBELICS_SEPARATOR)


def obelics_document(record: Mapping[str, Any]) -> Document:
    """OBELICS: `texts` and `images` of one length; at each index one is a string and the other null."""
    texts, images = record.get("texts"), record.get("images")
    if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
        got = ", ".join(
            f"{key} {len(value) if isinstance(value, list) else type(value).__name__}"
            for key, value in (("texts", texts), ("images", images))
        )
        raise _malformed(f"an OBELICS document needs 'texts' and 'images' lists of one length, got {got}")
    document = Document()
    for index, (text, image) in enumerate(zip(texts, images)):
        _obelics_segment(document, index, text, image)
    return document


def _mmc4_images(infos: Any, sentences: int) -> list[list[str]]:
    """Per sentence, the names of the images matched to it, in `image_info` order."""
    if infos is None:
        infos = []
    if not isinstance(infos, list):
        raise _malformed(f"'image_info' must be a list of objects, got {type(infos).__name__}")
    before: list[list[str]] = [[] for _ in range(sentences)]
    for index, info in enumerate(infos):
        name = info.get("image_name") if isinstance(info, Mapping) else None
        where = info.get("matched_text_index") if isinstance(info, Mapping) else None
        if not isinstance(name, str) or not name:
            raise _malformed(f"image_info[{index}] needs an 'image_name' path in the image folder")
        if not isinstance(where, int) or isinstance(where, bool) or not 0 <= where < sentences:
            raise _malformed(
                f"image_info[{index}].matched_text_index must be a sentence index in [0, {sentences}), got {where!r}"
            )
        before[where].append(name)
    return before


def mmc4_document(record: Mapping[str, Any]) -> Document:
    """MMC4: the sentences of `text_list`, each image of `image_info` before its matched sentence."""
    sentences = record.get("text_list")
    if not isinstance(sentences, list) or not all(isinstance(sentence, str) for sentence in sentences):
        raise _malformed("an MMC4 document needs 'text_list', a list of strings")
    document = Document()
    for sentence, names in zip(sentences, _mmc4_images(record.get("image_info"), len(sentences))):
        for name in names:
            document.add_image(name)
        document.add_text(sentence, MMC4_SEPARATOR)
    return document


def text_document(record: Mapping[str, Any]) -> Document:
    """A text-only record: its `text` string."""
    text = record.get("text")
    if not isinstance(text, str):
        raise _malformed(f"a text record needs a 'text' string, got {type(text).__name__}")
    visual = [key for key in ("image", "images", "video") if record.get(key)]
    if visual:  # training the text alone would silently drop the picture
        raise _malformed(
            f"a text record has no images, but this one has {visual[0]!r}; write image-text pairs as "
            "conversations (captions under the plain template) or documents"
        )
    document = Document()
    document.add_text(text, "")
    return document


def document_of(record: Any, fmt: str) -> Document:
    """The document an `interleaved` or `text` record holds; raises `BadSampleError` when it holds none."""
    check_loaded(record)
    if fmt == "text":
        document = text_document(record)
    elif "texts" in record or "images" in record:
        document = obelics_document(record)
    elif "text_list" in record:
        document = mmc4_document(record)
    else:
        raise _malformed(
            "format 'interleaved' needs 'texts' and 'images' (OBELICS) or 'text_list' and 'image_info' (MMC4)"
        )
    if not document.texts:
        raise BadSampleError("empty document", f"no text to learn from ({len(document.images)} image(s))")
    return document


def _check_placeholders(document: Document, processor: LlavaKitProcessor | None) -> None:
    """Text holding a placeholder token would be read as one: the images would no longer match."""
    tokens = [("<image>", processor.image_token if processor is not None else IMAGE_PLACEHOLDER)]
    if processor is not None and processor.video is not None:
        tokens.append(("<video>", processor.video_token))
    for text in document.texts:
        for name, token in tokens:
            if token in text:
                raise BadSampleError(
                    f"{name} count mismatch",
                    f"the text holds {token!r}, read as a placeholder; a document's images are its image segments",
                )


def _check_learnable(encoded: Mapping[str, Any], length: int, max_length: int) -> None:
    """A cut that leaves no labelled token after the first (never predicted) has nothing to train on."""
    if int((encoded["labels"][1:] != IGNORE_INDEX).sum()) == 0:
        raise BadSampleError(
            "over max length",
            f"{length} tokens > max_length={max_length}, and the cut before the first image that does not "
            "fit leaves no text to learn",
        )


def _encode_document(
    record: Any, fmt: str, spec: DatasetSpec, processor: LlavaKitProcessor | None, max_length: int | None
) -> EncodedSample:
    check_loaded(record)
    check_unicode(record)
    document = document_of(record, fmt)
    _check_placeholders(document, processor)
    paths = folder_paths(document.images, "image", spec.images_root, spec.allow_outside_paths)
    images = load_images(paths, record.get(EMBEDDED_IMAGES_KEY))
    if processor is None:
        return EncodedSample(fmt, {}, len(images))
    try:
        encoded = processor.encode_document(document.parts, images)
    except ValueError as error:
        raise BadSampleError("encoding failed", str(error)) from None
    length = int(encoded["input_ids"].shape[0])
    if max_length is None or length <= max_length:
        return EncodedSample(fmt, encoded, len(images))
    encoded = processor.truncate_document(encoded, max_length)
    _check_learnable(encoded, length, max_length)
    return EncodedSample(fmt, encoded, len(images), truncated_tokens=length - int(encoded["input_ids"].shape[0]))


def encode_dataset_sample(
    record: Any, spec: DatasetSpec, processor: LlavaKitProcessor | None, max_length: int | None
) -> EncodedSample:
    """Check and encode one record of dataset `spec` in its format; raises `BadSampleError` with the first problem.

    Conversations go through `llavakit.data.records.encode_sample` (an over-long one is a bad
    sample: a cut could drop its answer); documents and text through the processor's
    `encode_document`, cut to `max_length`. Without a processor only the checks before
    tokenization run.
    """
    fmt = record_format(record, spec.format)
    if fmt != "conversation":
        return _encode_document(record, fmt, spec, processor, max_length)
    features = encode_sample(record, spec, processor, max_length)
    images = image_paths(record, spec.images_root, spec.allow_outside_paths)
    videos = video_paths(record, spec.videos_root, spec.allow_outside_paths)
    return EncodedSample(fmt, features, len(images), len(videos))


def visual_paths(
    record: Any, fmt: str, image_folder: str | Path, video_folder: str | Path, allow_outside: bool = False
) -> tuple[list[Path], list[Path]]:
    """The record's image and video paths under their folders; raises `BadSampleError` when unreadable."""
    if fmt == "conversation":
        if not isinstance(record, Mapping):
            return [], []
        return image_paths(record, image_folder, allow_outside), video_paths(record, video_folder, allow_outside)
    return folder_paths(document_of(record, fmt).images, "image", image_folder, allow_outside), []


def record_words(record: Any, fmt: str) -> int | None:
    """Whitespace-separated words of the record's text (a cheap length), or None when it has no readable text."""
    if fmt == "conversation":
        if not isinstance(record, Mapping) or not isinstance(record.get("conversations"), list):
            return None
        turns = [turn for turn in record["conversations"] if isinstance(turn, Mapping)]
        return sum(len(text.split()) for text in turn_texts(turns))
    try:
        return sum(len(text.split()) for text in document_of(record, fmt).texts)
    except BadSampleError:
        return None


def visual_count(record: Any, fmt: str) -> int:
    """How many images and videos the record names (0 when it cannot be read)."""
    if fmt == "conversation":
        if not isinstance(record, Mapping):
            return 0
        return sum(_count(record.get(key)) for key in ("image", "video"))
    try:
        return len(document_of(record, fmt).images)
    except BadSampleError:
        return 0


def _count(value: Any) -> int:
    return 0 if not value else 1 if isinstance(value, str) else len(value) if isinstance(value, list) else 0


__all__ = [
    "Document",
    "EncodedSample",
    "MMC4_SEPARATOR",
    "OBELICS_SEPARATOR",
    "document_of",
    "encode_dataset_sample",
    "mmc4_document",
    "obelics_document",
    "record_format",
    "record_words",
    "text_document",
    "visual_count",
    "visual_paths",
]
