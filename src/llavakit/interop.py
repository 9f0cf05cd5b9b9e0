"""Checkpoint folders in and out: weights (model/convert.py) plus the tokenizer and processor files.

`import_checkpoint` reads a transformers Llava folder or an original LLaVA folder and writes
a llavakit checkpoint (model + `LlavaKitProcessor`). `export_checkpoint` writes a folder that
transformers' `LlavaForConditionalGeneration` and `LlavaProcessor` load with no llavakit
installed, which is what vLLM, SGLang and TGI serve.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

from llavakit.data.images import ImageProcessingConfig
from llavakit.data.processor import LlavaKitProcessor
from llavakit.model.configuration import VISION_TYPES_WITH_CLS
from llavakit.model.convert import (
    export_to_transformers,
    import_original_llava,
    import_transformers_llava,
    is_original_llava_checkpoint,
    read_original_llava_config,
)
from llavakit.model.llava import LlavaKitForCausalLM

IMAGE_TOKEN = "<image>"


def default_template(text_model_type: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The conversation template a language model family was tuned with (override with --template)."""
    if text_model_type.startswith("qwen"):
        return "chatml"
    if tokenizer.eos_token == "<|eot_id|>":
        return "llama3"
    return "vicuna_v1"


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a checkpoint folder")
    return json.loads(path.read_text())


def _image_config_from_transformers(folder: Path) -> ImageProcessingConfig:
    image_processor = AutoImageProcessor.from_pretrained(folder)
    crop = getattr(image_processor, "crop_size", None) or image_processor.size
    size = crop.get("height") or crop.get("shortest_edge")
    return ImageProcessingConfig(
        mode="pad" if getattr(image_processor, "do_pad", False) else "square",
        size=int(size),
        mean=tuple(image_processor.image_mean),
        std=tuple(image_processor.image_std),
    )


def import_checkpoint(
    source: str | Path, output: str | Path, template: str | None = None, vision_tower: str | None = None
) -> LlavaKitForCausalLM:
    """Convert `source` (transformers `llava` or original `llava_*` folder) into a llavakit checkpoint at `output`."""
    source, output = Path(source), Path(output)
    model_type = _read_config(source).get("model_type", "")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if is_original_llava_checkpoint(source):
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        model = import_original_llava(source, image_token_id=image_token_id, vision_tower_path=vision_tower)
        image_mode = "pad" if read_original_llava_config(source).image_aspect_ratio == "pad" else "square"
        image_config = None
    elif model_type == "llava":
        model = import_transformers_llava(source)
        image_config = _image_config_from_transformers(source)
    else:
        raise ValueError(f"{source}: model_type {model_type!r} is neither transformers 'llava' nor an original LLaVA checkpoint")
    template = template or default_template(model.config.text_config.model_type, tokenizer)
    if image_config is None:
        processor = LlavaKitProcessor.from_model_config(tokenizer, model.config, template, image_mode=image_mode)
    else:
        processor = LlavaKitProcessor(
            tokenizer, template, image_config, num_image_tokens=model.config.num_image_tokens, image_token=IMAGE_TOKEN
        )
    model.save_pretrained(output)
    processor.save_pretrained(output)
    return model


def export_checkpoint(checkpoint: str | Path, output: str | Path) -> None:
    """Write a transformers-native Llava folder (model, tokenizer, processor, chat template)."""
    model = LlavaKitForCausalLM.from_pretrained(checkpoint)
    processor = LlavaKitProcessor.from_pretrained(checkpoint)
    exported = export_to_transformers(model)  # raises for connectors transformers cannot represent
    vision = model.config.vision_config
    has_cls = vision.model_type in VISION_TYPES_WITH_CLS
    hf_processor = processor.to_transformers(
        patch_size=vision.patch_size,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        num_additional_image_tokens=int(has_cls),
    )
    exported.save_pretrained(output)
    hf_processor.save_pretrained(output)
