"""Checkpoint folders in and out: weights (transformers_llava.py, transformers_next.py,
original_llava.py) plus the tokenizer and processor files (processor_export.py).

`import_checkpoint` reads a transformers Llava, LlavaNext or LlavaOnevision folder, or an
original LLaVA folder, and writes a llavakit checkpoint (model + `LlavaKitProcessor`).
`export_checkpoint` writes a folder that transformers loads with no llavakit installed, which
is what vLLM, SGLang and TGI serve: `LlavaForConditionalGeneration` + `LlavaProcessor` for a
fixed-resolution model, `LlavaNextForConditionalGeneration` + `LlavaNextProcessor` for `anyres`
(and `hd` with the base image first), `LlavaOnevisionForConditionalGeneration` for
`anyres_max_N` with its image processor, tokenizer and a processor_config.json naming
transformers' (torchvision) video processor.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

from llavakit.interop.original_llava import (
    import_original_llava,
    is_original_llava_checkpoint,
    read_original_llava_config,
)
from llavakit.interop.processor_export import (
    save_onevision_processor,
    transformers_llava_next_processor,
    transformers_llava_processor,
)
from llavakit.interop.transformers_llava import export_to_transformers, import_transformers_llava
from llavakit.interop.transformers_next import (
    NEXT_MODEL_TYPES,
    export_to_transformers_llava_next,
    import_transformers_llava_next,
)
from llavakit.model.configuration import VISION_TYPES_WITH_CLS
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.images import RESAMPLE_FILTERS, ImageProcessingConfig
from llavakit.processing.processor import LlavaKitProcessor

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


def _image_config_from_transformers(folder: Path, image_processor=None) -> ImageProcessingConfig:
    image_processor = image_processor or AutoImageProcessor.from_pretrained(folder)
    crop = getattr(image_processor, "crop_size", None) or image_processor.size
    size = crop.get("height") or crop.get("shortest_edge")
    return ImageProcessingConfig(
        mode="pad" if getattr(image_processor, "do_pad", False) else "square",
        size=int(size),
        mean=tuple(image_processor.image_mean),
        std=tuple(image_processor.image_std),
    )


def _resample_name(image_processor) -> str:
    resample = getattr(image_processor, "resample", None)
    names = {int(value): name for name, value in RESAMPLE_FILTERS.items()}
    if resample is None or int(resample) not in names:
        raise ValueError(f"image processor resample {resample!r} has no llavakit filter ({sorted(RESAMPLE_FILTERS)})")
    return names[int(resample)]


def _import_next(source: Path, tokenizer: PreTrainedTokenizerBase, template: str | None):
    """A LlavaNext / LlavaOnevision folder: the model, and a processor matching its image processor."""
    model = import_transformers_llava_next(source)
    image_processor = AutoImageProcessor.from_pretrained(source)
    base = _image_config_from_transformers(source, image_processor)
    image_config = ImageProcessingConfig(
        mode=base.mode, size=base.size, mean=base.mean, std=base.std, resample=_resample_name(image_processor)
    )
    pinpoints = [tuple(int(v) for v in p) for p in getattr(image_processor, "image_grid_pinpoints", None) or ()]
    if pinpoints and pinpoints != list(model.config.grid_pinpoints):
        raise ValueError(
            f"{source}: the image processor's image_grid_pinpoints {pinpoints} differ from the model config's "
            f"{model.config.grid_pinpoints}; the crops would not match the model's merge"
        )
    template = template or default_template(model.config.text_config.model_type, tokenizer)
    processor = LlavaKitProcessor.from_model_config(tokenizer, model.config, template, image_config=image_config)
    return model, processor


def import_checkpoint(
    source: str | Path, output: str | Path, template: str | None = None, vision_tower: str | None = None
) -> LlavaKitForCausalLM:
    """Convert `source` (transformers `llava` or original `llava_*` folder) into a llavakit checkpoint at `output`."""
    source, output = Path(source), Path(output)
    model_type = _read_config(source).get("model_type", "")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if is_original_llava_checkpoint(source):
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
        image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        model = import_original_llava(source, image_token_id=image_token_id, vision_tower_path=vision_tower)
        image_mode = "pad" if read_original_llava_config(source).image_aspect_ratio == "pad" else "square"
        image_config = None
    elif model_type == "llava":
        model = import_transformers_llava(source)
        image_config = _image_config_from_transformers(source)
    elif model_type in NEXT_MODEL_TYPES:
        model, processor = _import_next(source, tokenizer, template)
        model.save_pretrained(output)
        processor.save_pretrained(output)
        return model
    else:
        raise ValueError(
            f"{source}: model_type {model_type!r} is neither transformers 'llava', 'llava_next', 'llava_onevision' "
            "nor an original LLaVA checkpoint"
        )
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


def _export_next(model: LlavaKitForCausalLM, processor: LlavaKitProcessor, output: Path) -> None:
    exported = export_to_transformers_llava_next(model)  # raises for settings transformers cannot represent
    vision = model.config.vision_config
    if exported.config.model_type == "llava_next":
        hf_processor = transformers_llava_next_processor(
            processor,
            patch_size=vision.patch_size,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            num_additional_image_tokens=int(vision.model_type in VISION_TYPES_WITH_CLS),
        )
        exported.save_pretrained(output)
        hf_processor.save_pretrained(output)
        return
    exported.save_pretrained(output)
    save_onevision_processor(processor, model.config, output)


def export_checkpoint(checkpoint: str | Path, output: str | Path) -> None:
    """Write a transformers-native Llava / LlavaNext / LlavaOnevision folder.

    The folder holds the model, tokenizer, processor and chat template.
    """
    model = LlavaKitForCausalLM.from_pretrained(checkpoint)
    processor = LlavaKitProcessor.from_pretrained(checkpoint)
    if model.config.image_mode != "fixed":
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        _export_next(model, processor, output)
        return
    exported = export_to_transformers(model)  # raises for connectors transformers cannot represent
    vision = model.config.vision_config
    has_cls = vision.model_type in VISION_TYPES_WITH_CLS
    hf_processor = transformers_llava_processor(
        processor,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        num_additional_image_tokens=int(has_cls),
    )
    exported.save_pretrained(output)
    hf_processor.save_pretrained(output)
