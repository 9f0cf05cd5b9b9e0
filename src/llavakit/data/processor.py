"""`LlavaKitProcessor`: text and images to model inputs, the one entry point for train, eval and serve.

Training (`encode_conversation`: ids + labels on answers only), evaluation and serving
(`__call__` on a prompt from `apply_chat_template`) all go through the same template, image
recipe and `<image>` expansion, so preprocessing never drifts between them. Each `<image>`
in the text becomes `num_image_tokens` copies of the image token id, as transformers'
`LlavaProcessor` does; `__call__` gives the same ids and pixels as that class (tested), and
`to_transformers()` builds one for exported checkpoints.

Saved as the tokenizer files plus `llavakit_processor.json` (template name, image recipe,
token count, image token).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, LlavaProcessor, PreTrainedTokenizerBase
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from llavakit.data.images import (
    CLIP_MEAN,
    CLIP_STD,
    RESAMPLE_FILTERS,
    ImageProcessingConfig,
    ImageSource,
    load_image,
    preprocess,
)
from llavakit.data.templates import get_template
from llavakit.model.configuration import LlavaKitConfig

PROCESSOR_FILE = "llavakit_processor.json"
IGNORE_INDEX = -100

# Normalisation each vision family was pretrained with, by the model_type of its config.
_VISION_NORMALIZATION = {
    "clip_vision_model": (CLIP_MEAN, CLIP_STD),
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

ImageInput = ImageSource | np.ndarray


def _where(sample_id: Any) -> str:
    return f"sample {sample_id!r}" if sample_id is not None else "the conversation"


class LlavaKitProcessor:
    """Template + tokenizer + image recipe + `<image>` expansion.

    `image_token` must be one added token of `tokenizer` (so text around it never merges
    with it); `num_image_tokens` is how many features the model produces per image
    (`LlavaKitConfig.num_image_tokens`).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: str,
        image_config: ImageProcessingConfig,
        num_image_tokens: int,
        image_token: str = "<image>",
    ):
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
        self.tokenizer = tokenizer
        self.template_name = template
        self.template = get_template(template)
        self.image_config = image_config
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.image_token_id = self._check_image_token(tokenizer, image_token)

    @staticmethod
    def _check_image_token(tokenizer: PreTrainedTokenizerBase, image_token: str) -> int:
        ids = tokenizer.encode(image_token, add_special_tokens=False)
        if len(ids) != 1 or image_token not in tokenizer.get_added_vocab():
            raise ValueError(
                f"the image token {image_token!r} must be a single added token of the tokenizer (it encodes to "
                f"{ids}); add it with tokenizer.add_special_tokens({{'extra_special_tokens': [{image_token!r}]}}) "
                "and resize the model's embeddings"
            )
        return ids[0]

    @classmethod
    def from_model_config(
        cls, tokenizer: PreTrainedTokenizerBase, config: LlavaKitConfig, template: str, image_mode: str = "pad"
    ) -> LlavaKitProcessor:
        """A processor whose image size, normalisation and token count match `config`'s vision tower."""
        vision = config.vision_config
        if vision.model_type not in _VISION_NORMALIZATION:
            raise ValueError(
                f"no known image normalisation for vision model_type {vision.model_type!r}; "
                f"known: {', '.join(_VISION_NORMALIZATION)}; build an ImageProcessingConfig yourself"
            )
        mean, std = _VISION_NORMALIZATION[vision.model_type]
        image_config = ImageProcessingConfig(mode=image_mode, size=vision.image_size, mean=mean, std=std)
        processor = cls(tokenizer, template, image_config, num_image_tokens=config.num_image_tokens)
        if processor.image_token_id != config.image_token_id:
            raise ValueError(
                f"the tokenizer's {processor.image_token!r} has id {processor.image_token_id} but the model config "
                f"expects image_token_id={config.image_token_id}"
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

    def _expand(self, ids: Sequence[int]) -> list[int]:
        expanded = []
        for token in ids:
            if token == self.image_token_id:
                expanded.extend([token] * self.num_image_tokens)
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

    # ---- inference / evaluation -----------------------------------------------------------

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
    ) -> BatchFeature:
        """Tokenize prompts, expand each `<image>`, preprocess images (in text order).

        `images`: None, one image, a flat list (consumed in placeholder order across the
        texts) or one list per text. Returns input_ids, attention_mask and, with images,
        pixel_values (N, 3, S, S).
        """
        texts = [text] if isinstance(text, str) else list(text)
        groups = self._images_per_text(texts, images)
        ids = [self._expand(self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"]) for t in texts]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=padding, return_attention_mask=True)
        data = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        flat = [image for group in groups for image in group]
        if flat:
            data["pixel_values"] = self._pixel_values(flat)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        images: Any = None,
        return_tensors: str | None = "pt",
    ) -> str | BatchFeature:
        """The prompt text for serving; with `tokenize=True`, the processed inputs (ids, mask, pixels)."""
        prompt = self.template.render(conversation, add_generation_prompt=add_generation_prompt).text
        if not tokenize:
            return prompt
        return self(prompt, images=images, return_tensors=return_tensors)

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
    ) -> dict[str, torch.Tensor | None]:
        """One training sample: render, tokenize, label the answers, expand `<image>`.

        Returns 1-D int64 tensors `input_ids`, `labels` (IGNORE_INDEX except on the tokens of
        each answer and its end token) and `attention_mask` (all ones), and `pixel_values`
        (N, 3, S, S) float32 or None. A token is labelled when its characters overlap an
        answer span, so a word token that also carries the space before the answer counts
        as the answer's. Too many tokens for `max_length` raises instead of truncating,
        because a cut could split an image's tokens or drop the whole answer.
        """
        if not self.tokenizer.is_fast:
            raise ValueError("encode_conversation needs a fast tokenizer (it uses character offsets)")
        rendered = self.template.render(conversation, sample_id=sample_id)
        images = list(images or [])
        count = rendered.text.count(self.image_token)
        if count != len(images):
            raise ValueError(
                f"{_where(sample_id)} has {count} {self.image_token} placeholder(s) but {len(images)} image(s)"
            )
        encoding = self.tokenizer(rendered.text, return_offsets_mapping=True)
        spans = rendered.answer_spans
        input_ids, labels = [], []
        for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
            if token == self.image_token_id:
                input_ids += [token] * self.num_image_tokens
                labels += [IGNORE_INDEX] * self.num_image_tokens
                continue
            answer = end > start and any(start < span_end and span_start < end for span_start, span_end in spans)
            input_ids.append(token)
            labels.append(token if answer else IGNORE_INDEX)
        if max_length is not None and len(input_ids) > max_length:
            raise ValueError(f"{_where(sample_id)} is {len(input_ids)} tokens long, more than max_length={max_length}")
        pixel_values = torch.from_numpy(self._pixel_values(images, sample_id)) if images else None
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
            "pixel_values": pixel_values,
        }

    # ---- persistence and export ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "template": self.template_name,
            "image": self.image_config.to_dict(),
            "num_image_tokens": self.num_image_tokens,
            "image_token": self.image_token,
        }

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
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(
            tokenizer,
            data["template"],
            ImageProcessingConfig.from_dict(data["image"]),
            num_image_tokens=data["num_image_tokens"],
            image_token=data["image_token"],
        )

    def to_transformers(
        self, patch_size: int, vision_feature_select_strategy: str, num_additional_image_tokens: int
    ) -> LlavaProcessor:
        """The equivalent transformers `LlavaProcessor` (same ids, same pixels, same chat template)."""
        size = self.image_config.size
        tokens = (size // patch_size) ** 2 + num_additional_image_tokens
        tokens -= int(vision_feature_select_strategy == "default")
        if tokens != self.num_image_tokens:
            raise ValueError(
                f"a LlavaProcessor with patch_size={patch_size}, strategy={vision_feature_select_strategy!r} and "
                f"{num_additional_image_tokens} additional token(s) would emit {tokens} image tokens, "
                f"this processor emits {self.num_image_tokens}"
            )
        image_kwargs = dict(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=list(self.image_config.mean),
            image_std=list(self.image_config.std),
            resample=int(RESAMPLE_FILTERS[self.image_config.resample]),
        )
        if self.image_config.mode == "pad":
            image_processor = LlavaImageProcessorPil(do_pad=True, **image_kwargs)
        else:
            image_processor = CLIPImageProcessorPil(**image_kwargs)
        return LlavaProcessor(
            image_processor=image_processor,
            tokenizer=self.tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=self.template.chat_template,
            image_token=self.image_token,
            num_additional_image_tokens=num_additional_image_tokens,
        )




def _image_name(image: Any, sample_id: Any, index: int) -> str | None:
    """How errors name an image: its path, else the sample and position."""
    if isinstance(image, (str, Path)):
        return f"{image} (sample {sample_id!r})" if sample_id is not None else str(image)
    return f"image {index} of sample {sample_id!r}" if sample_id is not None else None
