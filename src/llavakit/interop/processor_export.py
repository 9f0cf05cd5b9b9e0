"""A `LlavaKitProcessor` as transformers' processors: the other half of an exported checkpoint.

Why: an exported folder must tokenize and preprocess exactly as llavakit does when read by
transformers (and vLLM / SGLang behind it) with no llavakit installed. Each function builds
the transformers object that gives the same ids, pixels and chat template (tested side by
side in tests/test_processor.py, tests/test_highres.py and tests/test_convert_next.py):

    fixed resolution         LlavaProcessor       (LlavaImageProcessorPil for `pad`, CLIPImageProcessorPil for `square`)
    hd / anyres              LlavaNextProcessor   (LlavaNextImageProcessorPil)
    anyres_max_N + video     LlavaOnevisionProcessor files, written by hand (its class needs torchvision)
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import LlavaNextProcessor, LlavaProcessor
from transformers.image_utils import PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from llavakit.model.configuration import VISION_TYPES_WITH_CLS, LlavaKitConfig
from llavakit.processing.highres import HighResConfig
from llavakit.processing.images import RESAMPLE_FILTERS, ImageProcessingConfig
from llavakit.processing.processor import LlavaKitProcessor


def _text_side(processor: LlavaKitProcessor, patch_size: int, strategy: str, extra_tokens: int) -> dict:
    """What LlavaProcessor and LlavaNextProcessor share: tokenizer, template, image token and its count's geometry."""
    return dict(
        tokenizer=processor.tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=processor.template.chat_template,
        image_token=processor.image_token,
        num_additional_image_tokens=extra_tokens,
    )


def _fixed_image_processor(config: ImageProcessingConfig) -> LlavaImageProcessorPil | CLIPImageProcessorPil:
    """`pad` pads to a mean-coloured square first (LlavaImageProcessor); `square` resizes only (CLIP's)."""
    image_kwargs = dict(
        size={"shortest_edge": config.size},
        crop_size={"height": config.size, "width": config.size},
        image_mean=list(config.mean),
        image_std=list(config.std),
        resample=int(RESAMPLE_FILTERS[config.resample]),
    )
    if config.mode == "pad":
        return LlavaImageProcessorPil(do_pad=True, **image_kwargs)
    return CLIPImageProcessorPil(**image_kwargs)


def transformers_llava_processor(
    processor: LlavaKitProcessor, patch_size: int, vision_feature_select_strategy: str, num_additional_image_tokens: int
) -> LlavaProcessor:
    """The equivalent transformers `LlavaProcessor` of a fixed-resolution processor (same ids, pixels, template).

    The geometry arguments are the model's; a LlavaProcessor that would emit another token count raises.
    """
    if processor.highres is not None or processor.video is not None:
        raise ValueError(
            "a high-resolution or video processor has no LlavaProcessor form; use transformers_llava_next_processor()"
        )
    tokens = (processor.image_config.size // patch_size) ** 2 + num_additional_image_tokens
    tokens -= int(vision_feature_select_strategy == "default")
    if tokens != processor.num_image_tokens:
        raise ValueError(
            f"a LlavaProcessor with patch_size={patch_size}, strategy={vision_feature_select_strategy!r} and "
            f"{num_additional_image_tokens} additional token(s) would emit {tokens} image tokens, "
            f"this processor emits {processor.num_image_tokens}"
        )
    image_processor = _fixed_image_processor(processor.image_config)
    return LlavaProcessor(
        image_processor,
        **_text_side(processor, patch_size, vision_feature_select_strategy, num_additional_image_tokens),
    )


def transformers_image_processor(
    highres: HighResConfig, config: ImageProcessingConfig
) -> LlavaNextImageProcessorPil | LlavaOnevisionImageProcessorPil:
    """The transformers image processor (PIL backend) that gives a grid mode's pixels and image_sizes:
    `LlavaOnevisionImageProcessorPil` for `anyres_max_N`, `LlavaNextImageProcessorPil` otherwise."""
    common = dict(
        image_grid_pinpoints=[list(p) for p in highres.grid_pinpoints],
        image_mean=list(config.mean),
        image_std=list(config.std),
        resample=int(RESAMPLE_FILTERS[config.resample]),
    )
    size = config.size
    if highres.mode.startswith("anyres_max_"):
        return LlavaOnevisionImageProcessorPil(size={"height": size, "width": size}, **common)
    return LlavaNextImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **common)


def transformers_llava_next_processor(
    processor: LlavaKitProcessor, patch_size: int, vision_feature_select_strategy: str, num_additional_image_tokens: int
) -> LlavaNextProcessor:
    """The equivalent transformers `LlavaNextProcessor` of an `hd` / `anyres` processor (same ids, pixels, template).

    OneVision's processor needs transformers' torchvision video processor: see `save_onevision_processor`.
    """
    highres = processor.highres
    if highres is None or highres.mode not in ("hd", "anyres") or processor.video is not None:
        raise ValueError("only an hd / anyres processor without video has a LlavaNextProcessor form")
    if highres.multi_image_base_only or not highres.newline:
        raise ValueError("LlavaNextProcessor gives every image its grid and row-end newlines")
    image_processor = transformers_image_processor(highres, processor.image_config)
    return LlavaNextProcessor(
        image_processor,
        **_text_side(processor, patch_size, vision_feature_select_strategy, num_additional_image_tokens),
    )


def transformers_onevision_processor_config(processor: LlavaKitProcessor, config: LlavaKitConfig) -> dict:
    """transformers' LlavaOnevisionProcessor config (`processor_config.json`) of an `anyres_max_N` processor.

    Built by hand, because the class cannot be instantiated without torchvision (its video
    processor); a torchvision install loads it.
    """
    if processor.highres is None or not processor.highres.mode.startswith("anyres_max_"):
        raise ValueError("only an anyres_max_N processor has a LlavaOnevisionProcessor form")
    image = processor.image_config
    size = {"height": image.size, "width": image.size}
    return {
        "processor_class": "LlavaOnevisionProcessor",
        "image_processor": transformers_image_processor(processor.highres, image).to_dict(),
        "video_processor": {
            "video_processor_type": "LlavaOnevisionVideoProcessor",
            "size": size,
            "image_mean": list(image.mean),
            "image_std": list(image.std),
            "resample": int(PILImageResampling(int(RESAMPLE_FILTERS[image.resample]))),
            "rescale_factor": 1 / 255,
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "do_sample_frames": False,
        },
        "image_token": processor.image_token,
        "video_token": processor.video_token,
        # transformers counts tokens per crop with the CLS, then removes one under 'default'.
        "num_image_tokens": config.feature_side**2 + int(config.vision_config.model_type in VISION_TYPES_WITH_CLS),
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "vision_aspect_ratio": config.image_mode,
    }


def save_onevision_processor(processor: LlavaKitProcessor, config: LlavaKitConfig, output: str | Path) -> None:
    """Write the tokenizer (with the chat template), `processor_config.json` and `chat_template.jinja`."""
    output = Path(output)
    processor_config = transformers_onevision_processor_config(processor, config)
    tokenizer = processor.tokenizer
    previous = tokenizer.chat_template
    tokenizer.chat_template = processor.template.chat_template
    try:
        tokenizer.save_pretrained(output)
    finally:
        tokenizer.chat_template = previous
    (output / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")
    (output / "chat_template.jinja").write_text(processor.template.chat_template)
