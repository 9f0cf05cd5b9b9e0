"""`LlavaKitProcessor`: text and images to model inputs, the one entry point for train, eval and serve.

Training (`encode_conversation`: ids + labels on answers only; `encode_document`: interleaved
image-text documents and plain text, labels on all text, cut by `truncate_document`), evaluation
and serving (`__call__` on a prompt from `apply_chat_template`) all go through the same image
recipe and `<image>` expansion, so preprocessing never drifts between them. Each `<image>`
in the text becomes `num_image_tokens` copies of the image token id, as transformers'
`LlavaProcessor` does; `__call__` gives the same ids and pixels as that class (tested), and
`llavakit.interop.processor_export` builds one for exported checkpoints.

High resolution and video (`LlavaKitConfig.image_mode` other than `fixed`, `video_token_id`):
each image becomes its base image plus the crops of its best canvas
(`llavakit.processing.highres`), each `<image>` is expanded to exactly the number of features the
model will make of that image, and each `<video>` to the pooled frames' count
(`llavakit.processing.video`). The outputs then add, beside `pixel_values`:

* `image_sizes` `(images, 2)`: each image's original (height, width);
* `image_num_crops` `(images,)`: encoder inputs per image (1 + grid cells, or 1 for an image
  of a multi-image sample encoded at base resolution only);
* `pixel_values_videos` `(frames of all videos, 3, S, S)` and `video_num_frames` `(videos,)`.

`pixel_values` stays flat in the grid modes, `(crops of all images, 3, S, S)`, base image
first per image, so no padding crops are encoded; `LlavaKitForCausalLM` splits it with
`image_num_crops` (and also accepts transformers' padded `(images, crops, 3, S, S)` form).
In the fixed mode without video the outputs are exactly those of transformers' LlavaProcessor.

Saved as the tokenizer files plus `llavakit_processor.json` (template name, image recipe,
token count, image token, and the high-resolution / video layout when set).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from llavakit.model.configuration import LlavaKitConfig
from llavakit.processing.highres import HighResConfig, preprocess_highres
from llavakit.processing.images import (
    CLIP_MEAN,
    CLIP_STD,
    ImageProcessingConfig,
    ImageSource,
    load_image,
    preprocess,
)
from llavakit.processing.templates import get_template
from llavakit.processing.video import (
    FrameSampling,
    VideoConfig,
    video_frames,
    video_pixel_values,
)

PROCESSOR_FILE = "llavakit_processor.json"
IGNORE_INDEX = -100

# Normalisation each vision family was pretrained with, by the model_type of its config.
_VISION_NORMALIZATION = {
    "clip_vision_model": (CLIP_MEAN, CLIP_STD),
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

ImageInput = ImageSource | np.ndarray
VideoInput = str | Path | np.ndarray | Sequence[Image.Image | np.ndarray]


@dataclass
class _Visuals:
    """Preprocessed images or videos of a text or sample: pixels, and the tokens each one becomes."""

    pixels: list[np.ndarray] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # crops per image / frames per video

    def add(self, pixels: np.ndarray, tokens: int, size: tuple[int, int] | None = None) -> None:
        self.pixels.append(pixels)
        self.tokens.append(tokens)
        self.counts.append(int(pixels.shape[0]))
        if size is not None:
            self.sizes.append((int(size[0]), int(size[1])))

    def extend(self, other: _Visuals) -> None:
        self.pixels += other.pixels
        self.tokens += other.tokens
        self.sizes += other.sizes
        self.counts += other.counts

    def stacked(self) -> np.ndarray:
        return np.concatenate(self.pixels) if len(self.pixels) > 1 else self.pixels[0]


def _where(sample_id: Any) -> str:
    return f"sample {sample_id!r}" if sample_id is not None else "the conversation"


def _document(sample_id: Any) -> str:
    return f"document {sample_id!r}" if sample_id is not None else "the document"


def _tokenizer_config_hint(directory: Path) -> dict[str, Any]:
    """The language model's config for AutoTokenizer when the folder holds a llavakit model.

    AutoTokenizer reads `config.json` to find a tokenizer class; a `llavakit` model type is
    not in its tables, so hand it the text config instead (its model type is).
    """
    config_path = directory / "config.json"
    if not config_path.is_file():
        return {}
    if json.loads(config_path.read_text()).get("model_type") != LlavaKitConfig.model_type:
        return {}
    return {"config": LlavaKitConfig.from_pretrained(directory).text_config}


class LlavaKitProcessor:
    """Template + tokenizer + image recipe + `<image>` (and `<video>`) expansion.

    `image_token` must be one added token of `tokenizer` (so text around it never merges
    with it); `num_image_tokens` is how many features the model produces per image in the
    fixed mode (`LlavaKitConfig.image_token_count()`); in the grid modes, where the count
    depends on each image's size (`highres`), it is that of an image at base resolution only.
    `video` (with `video_token`, one added token too) enables `<video>` placeholders.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: str,
        image_config: ImageProcessingConfig,
        num_image_tokens: int,
        image_token: str = "<image>",
        highres: HighResConfig | None = None,
        video: VideoConfig | None = None,
        video_token: str = "<video>",
    ):
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
        if highres is not None and highres.crop_size != image_config.size:
            raise ValueError(
                f"the high-resolution crop size {highres.crop_size} differs from the image size {image_config.size}"
            )
        self.tokenizer = tokenizer
        self.template_name = template
        self.template = get_template(template)
        self.image_config = image_config
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.image_token_id = self._check_image_token(tokenizer, image_token)
        self.highres = highres
        self.video = video
        self.video_token = video_token
        self.video_token_id = self._check_image_token(tokenizer, video_token, "video") if video is not None else None

    @staticmethod
    def _check_image_token(tokenizer: PreTrainedTokenizerBase, image_token: str, what: str = "image") -> int:
        ids = tokenizer.encode(image_token, add_special_tokens=False)
        if len(ids) != 1 or image_token not in tokenizer.get_added_vocab():
            raise ValueError(
                f"the {what} token {image_token!r} must be a single added token of the tokenizer (it encodes to "
                f"{ids}); add it with llavakit.prepare_tokenizer(tokenizer, {image_token!r}) (or "
                f"tokenizer.add_special_tokens({{'extra_special_tokens': [{image_token!r}]}}, "
                "replace_extra_special_tokens=False)) and resize the model's embeddings"
            )
        return ids[0]

    @classmethod
    def from_model_config(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        config: LlavaKitConfig,
        template: str,
        image_aspect: str = "pad",
        image_config: ImageProcessingConfig | None = None,
        video_sampling: FrameSampling | None = None,
        resize_backend: str = "pil",
    ) -> LlavaKitProcessor:
        """A processor whose image size, normalisation, layout and token counts match `config`.

        `image_aspect` (`pad` / `square`) is how the fixed mode squares an image (and unused by the grid modes'
        crops); `image_config` overrides the recipe derived from the vision tower (e.g. the one a
        checkpoint's image processor was saved with). `video_sampling` picks the frames of video
        files; `resize_backend` is the grid modes' and videos' resize (`pil` or `torch`).
        """
        vision = config.vision_config
        if image_config is None:
            if vision.model_type not in _VISION_NORMALIZATION:
                raise ValueError(
                    f"no known image normalisation for vision model_type {vision.model_type!r}; "
                    f"known: {', '.join(_VISION_NORMALIZATION)}; build an ImageProcessingConfig yourself"
                )
            mean, std = _VISION_NORMALIZATION[vision.model_type]
            image_config = ImageProcessingConfig(mode=image_aspect, size=vision.image_size, mean=mean, std=std)
        highres = None
        if config.image_mode != "fixed":
            highres = HighResConfig(
                mode=config.image_mode,
                crop_size=config.crop_size,
                patch_size=int(vision.patch_size),
                grid_pinpoints=tuple(config.grid_pinpoints),
                newline=config.newline_in_images,
                multi_image_base_only=config.base_only_for_multi_image,
                resize_backend=resize_backend,
                feature_side=config.feature_side,
            )
        video = None
        if config.video_token_id is not None:
            video = VideoConfig(
                feature_side=config.feature_side,
                pool_mode=config.video_pool_mode,
                pool_stride=config.video_pool_stride,
                newline=config.video_newline,
                sampling=video_sampling or FrameSampling(),
            )
        num_image_tokens = config.image_token_count(base_only=True)
        processor = cls(tokenizer, template, image_config, num_image_tokens, highres=highres, video=video)
        if processor.image_token_id != config.image_token_id:
            raise ValueError(
                f"the tokenizer's {processor.image_token!r} has id {processor.image_token_id} but the model config "
                f"expects image_token_id={config.image_token_id}"
            )
        if video is not None and processor.video_token_id != config.video_token_id:
            raise ValueError(
                f"the tokenizer's {processor.video_token!r} has id {processor.video_token_id} but the model config "
                f"expects video_token_id={config.video_token_id}"
            )
        return processor

    # ---- ids -------------------------------------------------------------------------------

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an answer: EOS and the template's end-of-turn token when it is one token."""
        ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        stop = self.template.stop_token
        if stop is not None and stop in self.tokenizer.get_added_vocab():
            stop_id = self.tokenizer.convert_tokens_to_ids(stop)
            if stop_id not in ids:
                ids.append(stop_id)
        return ids

    def _expand(
        self, ids: Sequence[int], image_tokens: Sequence[int] | None = None, video_tokens: Sequence[int] = ()
    ) -> list[int]:
        """Each `<image>` / `<video>` id repeated as many times as its image / video gives features.

        `image_tokens`: per image, in order (default: `num_image_tokens` each).
        """
        counts = {self.image_token_id: iter(image_tokens or ()), self.video_token_id: iter(video_tokens)}
        expanded = []
        for token in ids:
            if token == self.image_token_id and image_tokens is None:
                expanded.extend([token] * self.num_image_tokens)
            elif token in counts and token is not None:
                expanded.extend([token] * next(counts[token]))
            else:
                expanded.append(token)
        return expanded

    def _pixel_values(self, images: Sequence[ImageInput], sample_id: Any = None) -> np.ndarray:
        """(N, 3, S, S) float32; paths and bytes are decoded here, errors name the file and sample."""
        arrays = []
        for index, image in enumerate(images):
            if not isinstance(image, np.ndarray):
                image = load_image(image, name=_image_name(image, sample_id, index))
            arrays.append(preprocess(image, self.image_config))
        return np.stack(arrays)

    def image_token_count(self, image_size: tuple[int, int] | None = None, base_only: bool = False) -> int:
        """`<image>` tokens for one image of `image_size` (height, width); `base_only`: encoded at base resolution."""
        if self.highres is None:
            return self.num_image_tokens
        if image_size is None and not base_only:
            raise ValueError(f"the {self.highres.mode!r} layout needs the image's (height, width) to count its tokens")
        return self.highres.num_tokens(image_size, base_only=base_only)

    def _images(self, images: Sequence[ImageInput], sample_id: Any = None) -> _Visuals:
        """The images of one sample (or text): pixels, sizes, crop and token counts.

        In a grid mode, a sample with several images encodes each at base resolution when the
        layout says so (OneVision's multi-image rule); otherwise every image gets its grid.
        """
        visuals = _Visuals()
        if self.highres is None:
            if images:
                for pixels in self._pixel_values(images, sample_id):
                    visuals.add(pixels[None], self.num_image_tokens)
            return visuals
        base_only = self.highres.multi_image_base_only and len(images) > 1
        for index, image in enumerate(images):
            if not isinstance(image, np.ndarray):
                image = load_image(image, name=_image_name(image, sample_id, index))
            crops = preprocess_highres(image, self.highres, self.image_config, base_only=base_only)
            visuals.add(crops.pixel_values, self.highres.num_tokens(crops.image_size, base_only), crops.image_size)
        return visuals

    def _videos(self, videos: Sequence[VideoInput], sample_id: Any = None) -> _Visuals:
        """The videos of one sample (or text): sampled frames at base resolution, token counts."""
        visuals = _Visuals()
        if not videos:
            return visuals
        if self.video is None:
            raise ValueError(
                f"{_where(sample_id)} has videos, but the processor has no video layout (model without video_token_id)"
            )
        backend = self.highres.resize_backend if self.highres is not None else "pil"
        for index, video in enumerate(videos):
            name = _video_name(video, sample_id, index)
            frames = video_frames(video, self.video.sampling, name=name)
            visuals.add(video_pixel_values(frames, self.image_config, backend), self.video.num_tokens(len(frames)))
        return visuals

    def _visual_outputs(self, images: _Visuals, videos: _Visuals) -> dict[str, np.ndarray]:
        """`pixel_values` (+ `image_sizes`, `image_num_crops` in the grid modes) and the video tensors."""
        data: dict[str, np.ndarray] = {}
        if images.pixels:
            data["pixel_values"] = images.stacked()
            if self.highres is not None:
                data["image_sizes"] = np.asarray(images.sizes, dtype=np.int64).reshape(-1, 2)
                data["image_num_crops"] = np.asarray(images.counts, dtype=np.int64)
        if videos.pixels:
            data["pixel_values_videos"] = videos.stacked()
            data["video_num_frames"] = np.asarray(videos.counts, dtype=np.int64)
        return data

    # ---- inference / evaluation -----------------------------------------------------------

    def _videos_per_text(self, texts: list[str], videos: Any) -> list[list[VideoInput]]:
        """`videos` (one video, or a flat list in placeholder order across the texts) split per text."""
        if videos is None:
            videos = []
        elif isinstance(videos, (str, Path)) or (isinstance(videos, np.ndarray) and videos.ndim == 4):
            videos = [videos]
        elif (
            isinstance(videos, (list, tuple))
            and videos
            and isinstance(videos[0], (Image.Image, np.ndarray))
            and not (isinstance(videos[0], np.ndarray) and videos[0].ndim == 4)
        ):
            videos = [videos]  # one video given as its list of frames
        videos = list(videos)
        counts = [text.count(self.video_token) if self.video is not None else 0 for text in texts]
        if videos and self.video is None:
            raise ValueError("videos were given, but the processor has no video layout (model without video_token_id)")
        if sum(counts) != len(videos):
            raise ValueError(
                f"{len(videos)} video(s) given but the texts have {sum(counts)} {self.video_token} placeholder(s)"
            )
        groups, start = [], 0
        for count in counts:
            groups.append(videos[start : start + count])
            start += count
        return groups

    def _images_per_text(self, texts: list[str], images: Any) -> list[list[ImageInput]]:
        counts = [text.count(self.image_token) for text in texts]
        if images is None:
            images = []
        elif isinstance(images, (Image.Image, np.ndarray, str, Path, bytes)):
            images = [images]
        images = list(images)
        nested = bool(images) and all(isinstance(item, (list, tuple)) for item in images)
        if nested:
            if len(images) != len(texts):
                raise ValueError(f"got {len(images)} image lists for {len(texts)} texts; give one list per text")
            for index, (count, group) in enumerate(zip(counts, images)):
                if count != len(group):
                    raise ValueError(
                        f"text {index} has {count} {self.image_token} placeholder(s) "
                        f"but {len(group)} image(s) were given for it"
                    )
            return [list(group) for group in images]
        if sum(counts) != len(images):
            per_text = ", ".join(f"text {i}: {c}" for i, c in enumerate(counts))
            raise ValueError(
                f"{len(images)} image(s) given but the texts have {sum(counts)} {self.image_token} "
                f"placeholder(s) ({per_text})"
            )
        groups, start = [], 0
        for count in counts:
            groups.append(images[start : start + count])
            start += count
        return groups

    def __call__(
        self,
        text: str | list[str],
        images: Any = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        add_special_tokens: bool = True,
        videos: Any = None,
    ) -> BatchFeature:
        """Tokenize prompts, expand each `<image>` / `<video>`, preprocess images and videos (in text order).

        `images`: None, one image, a flat list (consumed in placeholder order across the
        texts) or one list per text; the images of one text are its sample's (multi-image).
        `videos`: None, one video, or a flat list in placeholder order; a video is a file or
        frame-folder path, a uint8 (frames, H, W, 3) array or a list of frames. Returns
        input_ids, attention_mask and, with images, pixel_values (plus image_sizes and
        image_num_crops in the grid modes), with videos pixel_values_videos and video_num_frames.
        """
        texts = [text] if isinstance(text, str) else list(text)
        image_groups = self._images_per_text(texts, images)
        video_groups = self._videos_per_text(texts, videos)
        all_images, all_videos, ids = _Visuals(), _Visuals(), []
        for text_, group, video_group in zip(texts, image_groups, video_groups):
            text_images, text_videos = self._images(group), self._videos(video_group)
            all_images.extend(text_images)
            all_videos.extend(text_videos)
            token_ids = self.tokenizer(text_, add_special_tokens=add_special_tokens)["input_ids"]
            ids.append(self._expand(token_ids, text_images.tokens, text_videos.tokens))
        batch = self.tokenizer.pad({"input_ids": ids}, padding=padding, return_attention_mask=True)
        data = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        data.update(self._visual_outputs(all_images, all_videos))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        images: Any = None,
        return_tensors: str | None = "pt",
        videos: Any = None,
    ) -> str | BatchFeature:
        """The prompt text for serving; with `tokenize=True`, the processed inputs (ids, mask, pixels)."""
        prompt = self.template.render(conversation, add_generation_prompt=add_generation_prompt).text
        if not tokenize:
            return prompt
        return self(prompt, images=images, return_tensors=return_tensors, videos=videos)

    def decode(self, token_ids, **kwargs) -> str:
        return self.tokenizer.decode(token_ids, **kwargs)

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(sequences, **kwargs)

    # ---- training --------------------------------------------------------------------------

    def encode_conversation(
        self,
        conversation: Sequence[Mapping[str, Any]],
        images: Sequence[ImageInput] | None = None,
        sample_id: Any = None,
        max_length: int | None = None,
        videos: Sequence[VideoInput] | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """One training sample: render, tokenize, label the answers, expand `<image>` / `<video>`.

        Returns 1-D int64 tensors `input_ids`, `labels` (IGNORE_INDEX except on the tokens of
        each answer and its end token) and `attention_mask` (all ones), and `pixel_values`
        (N, 3, S, S) float32 or None. In the grid modes, a sample with images adds
        `image_sizes` and `image_num_crops`; one with videos adds `pixel_values_videos` and
        `video_num_frames` (see the module docstring). A token is labelled when its
        characters overlap an answer span, so a word token that also carries the space
        before the answer counts as the answer's. Too many tokens for `max_length` raises
        instead of truncating, because a cut could split an image's tokens or drop the whole answer.
        """
        if not self.tokenizer.is_fast:
            raise ValueError("encode_conversation needs a fast tokenizer (it uses character offsets)")
        rendered = self.template.render(conversation, sample_id=sample_id)
        images = list(images or [])
        videos = list(videos or [])
        count = rendered.text.count(self.image_token)
        if count != len(images):
            raise ValueError(
                f"{_where(sample_id)} has {count} {self.image_token} placeholder(s) but {len(images)} image(s)"
            )
        video_count = rendered.text.count(self.video_token) if self.video is not None else 0
        if video_count != len(videos):
            raise ValueError(
                f"{_where(sample_id)} has {video_count} {self.video_token} placeholder(s) but {len(videos)} video(s)"
            )
        image_visuals, video_visuals = self._images(images, sample_id), self._videos(videos, sample_id)
        visual_tokens = {
            self.image_token_id: iter(image_visuals.tokens),
            self.video_token_id: iter(video_visuals.tokens),
        }
        encoding = self.tokenizer(rendered.text, return_offsets_mapping=True)
        spans = rendered.answer_spans
        input_ids, labels = [], []
        for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
            if token is not None and token in visual_tokens:
                repeat = next(visual_tokens[token])
                input_ids += [token] * repeat
                labels += [IGNORE_INDEX] * repeat
                continue
            answer = end > start and any(start < span_end and span_start < end for span_start, span_end in spans)
            input_ids.append(token)
            labels.append(token if answer else IGNORE_INDEX)
        if max_length is not None and len(input_ids) > max_length:
            raise ValueError(f"{_where(sample_id)} is {len(input_ids)} tokens long, more than max_length={max_length}")
        return self._training_sample(input_ids, labels, image_visuals, video_visuals)

    def _training_sample(
        self, input_ids: list[int], labels: list[int], images: _Visuals, videos: _Visuals
    ) -> dict[str, torch.Tensor | None]:
        """Token lists and preprocessed visuals as the tensors a collator batches (see `encode_conversation`)."""
        visual = self._visual_outputs(images, videos)
        encoded = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
            "pixel_values": torch.from_numpy(visual.pop("pixel_values")) if images.pixels else None,
        }
        encoded.update({key: torch.from_numpy(value) for key, value in visual.items()})
        return encoded

    def _check_document_text(self, parts: Sequence[str | None], sample_id: Any) -> None:
        """Document text must not hold a placeholder token: the tokenizer would read it as one, and the
        sample's image (or video) tokens would no longer match its pixels."""
        tokens = [self.image_token] + ([self.video_token] if self.video is not None else [])
        for index, part in enumerate(parts):
            if part is None:
                continue
            if not isinstance(part, str):
                raise ValueError(f"{_document(sample_id)}: part {index} must be a string or None (an image)")
            for token in tokens:
                if token in part:
                    raise ValueError(
                        f"{_document(sample_id)}: text part {index} holds {token!r}, the placeholder token; "
                        "a document's images are its image parts"
                    )

    def encode_document(
        self,
        parts: Sequence[str | None],
        images: Sequence[ImageInput] | None = None,
        sample_id: Any = None,
    ) -> dict[str, torch.Tensor | None]:
        """One interleaved image-text document, or plain text, for language-model training: loss on all its text.

        `parts` is the document in reading order: a string for text, None for the next image of
        `images`. Parts are joined as they are (separators belong in the text). No template: the
        tokenizer adds its BOS as it does for any text, and its EOS (when it has one and did not
        add it) closes the document. Each image becomes its `<image>` expansion at its place.
        `labels` equal `input_ids` except on image tokens (IGNORE_INDEX). Returns the keys of
        `encode_conversation`; `truncate_document` cuts the result to a length. Raises ValueError
        when the image parts and `images` differ in number, or text holds the image (or video) token.
        """
        images = list(images or [])
        slots = sum(part is None for part in parts)
        if slots != len(images):
            raise ValueError(f"{_document(sample_id)} has {slots} image part(s) but {len(images)} image(s)")
        self._check_document_text(parts, sample_id)
        visuals = self._images(images, sample_id)
        text = "".join(self.image_token if part is None else part for part in parts)
        token_ids = list(self.tokenizer(text)["input_ids"])
        input_ids = self._expand(token_ids, visuals.tokens)
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not input_ids or input_ids[-1] != eos):
            input_ids.append(eos)
        labels = [IGNORE_INDEX if token == self.image_token_id else token for token in input_ids]
        return self._training_sample(input_ids, labels, visuals, _Visuals())

    def _tokens_per_image(self, encoded: Mapping[str, Any]) -> list[int]:
        """The `<image>` tokens of each image of an encoded sample, in order (from its layout keys)."""
        pixels = encoded.get("pixel_values")
        if pixels is None or len(pixels) == 0:
            return []
        if self.highres is None:
            return [self.num_image_tokens] * len(pixels)
        sizes, crops = encoded["image_sizes"].tolist(), encoded["image_num_crops"].tolist()
        return [self.highres.num_tokens(tuple(size), base_only=count == 1) for size, count in zip(sizes, crops)]

    def truncate_document(self, encoded: Mapping[str, Any], max_length: int) -> dict[str, Any]:
        """An `encode_document` result cut to at most `max_length` tokens, never inside an image's tokens.

        A cut that would split an image moves back to where that image starts; the images after
        the cut leave the sample with their pixels and layout rows. Long web documents are cut
        rather than dropped (as OBELICS / MM1-style pretraining does), since their first
        `max_length` tokens are still good text. A sample that fits comes back unchanged.
        """
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        if len(encoded["input_ids"]) <= max_length:
            return dict(encoded)
        positions = (torch.as_tensor(encoded["input_ids"]) == self.image_token_id).nonzero().flatten().tolist()
        cut, kept, start = max_length, 0, 0
        for tokens in self._tokens_per_image(encoded):
            first = positions[start]
            if first + tokens > cut:
                cut = min(cut, first)
                break
            kept, start = kept + 1, start + tokens
        return self._keep_images(dict(encoded), cut, kept)

    def _keep_images(self, encoded: dict[str, Any], length: int, kept: int) -> dict[str, Any]:
        """The first `length` tokens and the first `kept` images (crops, sizes and counts) of `encoded`."""
        for key in ("input_ids", "labels", "attention_mask"):
            encoded[key] = encoded[key][:length]
        if encoded.get("pixel_values") is None:
            return encoded
        if kept == 0:
            encoded["pixel_values"] = None
            encoded.pop("image_sizes", None)
            encoded.pop("image_num_crops", None)
            return encoded
        crops = encoded.get("image_num_crops")
        rows = int(crops[:kept].sum()) if crops is not None else kept
        encoded["pixel_values"] = encoded["pixel_values"][:rows]
        for key in ("image_sizes", "image_num_crops"):
            if key in encoded:
                encoded[key] = encoded[key][:kept]
        return encoded

    # ---- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = {
            "template": self.template_name,
            "image": self.image_config.to_dict(),
            "num_image_tokens": self.num_image_tokens,
            "image_token": self.image_token,
        }
        if self.highres is not None:
            data["highres"] = self.highres.to_dict()
        if self.video is not None:
            data["video"] = self.video.to_dict()
            data["video_token"] = self.video_token
        return data

    def save_pretrained(self, directory: str | Path) -> None:
        """Tokenizer files (chat template = this template's Jinja) plus `llavakit_processor.json`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        previous = self.tokenizer.chat_template
        self.tokenizer.chat_template = self.template.chat_template
        try:
            self.tokenizer.save_pretrained(directory)
        finally:
            self.tokenizer.chat_template = previous
        (directory / PROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LlavaKitProcessor:
        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {PROCESSOR_FILE}: not a llavakit processor folder")
        data = json.loads(path.read_text())
        tokenizer = AutoTokenizer.from_pretrained(directory, **_tokenizer_config_hint(directory))
        return cls(
            tokenizer,
            data["template"],
            ImageProcessingConfig.from_dict(data["image"]),
            num_image_tokens=data["num_image_tokens"],
            image_token=data["image_token"],
            highres=HighResConfig.from_dict(data["highres"]) if data.get("highres") else None,
            video=VideoConfig.from_dict(data["video"]) if data.get("video") else None,
            video_token=data.get("video_token", "<video>"),
        )


def _video_name(video: Any, sample_id: Any, index: int) -> str:
    """How errors name a video: its path, else the sample and position."""
    if isinstance(video, (str, Path)):
        return f"{video} (sample {sample_id!r})" if sample_id is not None else str(video)
    return f"video {index} of sample {sample_id!r}" if sample_id is not None else f"video {index}"


def _image_name(image: Any, sample_id: Any, index: int) -> str | None:
    """How errors name an image: its path, else the sample and position."""
    if isinstance(image, (str, Path)):
        return f"{image} (sample {sample_id!r})" if sample_id is not None else str(image)
    return f"image {index} of sample {sample_id!r}" if sample_id is not None else None
