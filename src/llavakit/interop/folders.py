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

Both read local folders only and check them first (`llavakit.model.checkpoint`): a missing
path, a damaged config.json or weight file, a folder of the wrong kind is a CheckpointError
naming it. The output is checked before anything loads: a folder that already holds files is
refused unless `overwrite`, which empties it just before writing, so an old
`model.safetensors.index.json` never stays beside a new single file. An output folder that
holds the source is refused, since emptying it would delete the source.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

from llavakit.errors import CheckpointError
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
from llavakit.model.checkpoint import (
    TOKENIZER_FILES,
    check_folder_exists,
    check_json_files,
    checkpoint_errors,
    load_checkpoint,
    read_checkpoint_config,
    weight_files,
)
from llavakit.model.configuration import VISION_TYPES_WITH_CLS
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.output_paths import check_output_dir, prepare_output_dir
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


def _check_source(source: Path) -> str:
    """The source folder's model_type, after its config, weights and tokenizer files are checked."""
    config = read_checkpoint_config(source)
    model_type = str(config.get("model_type", ""))
    if model_type == "llavakit":
        raise CheckpointError(
            f"{source} is already a llavakit checkpoint: nothing to import (`llavakit export` converts it)"
        )
    if model_type not in ("llava", *NEXT_MODEL_TYPES) and "mm_vision_tower" not in config:
        raise CheckpointError(
            f"{source}: model_type {model_type!r} is neither transformers 'llava', 'llava_next', 'llava_onevision' "
            "nor an original LLaVA checkpoint"
        )
    check_json_files(source)
    if not weight_files(source):
        raise CheckpointError(f"{source} has no model weights (model.safetensors, pytorch_model.bin or an index)")
    if not any((source / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"{source} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): "
            "copy its language model's tokenizer into the folder"
        )
    return model_type


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
    source: str | Path,
    output: str | Path,
    template: str | None = None,
    vision_tower: str | None = None,
    overwrite: bool = False,
) -> LlavaKitForCausalLM:
    """Convert `source` (transformers `llava` or original `llava_*` folder) into a llavakit checkpoint at `output`.

    A non-empty `output` is refused unless `overwrite` (then emptied before writing).
    """
    source = check_folder_exists(source, "source folder")
    output = check_output_dir(output, overwrite, [("the source", source)])
    model_type = _check_source(source)
    with checkpoint_errors(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(source)
    with checkpoint_errors(source, "model"):
        model, processor = _import_model(source, model_type, tokenizer, template, vision_tower)
    prepare_output_dir(output, overwrite)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    return model


def _import_model(
    source: Path, model_type: str, tokenizer: PreTrainedTokenizerBase, template: str | None, vision_tower: str | None
) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor]:
    """The converted model and its processor, by the source's layout."""
    if is_original_llava_checkpoint(source):
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
        image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        model = import_original_llava(source, image_token_id=image_token_id, vision_tower_path=vision_tower)
        image_mode = "pad" if read_original_llava_config(source).image_aspect_ratio == "pad" else "square"
        template = template or default_template(model.config.text_config.model_type, tokenizer)
        return model, LlavaKitProcessor.from_model_config(tokenizer, model.config, template, image_mode=image_mode)
    if model_type == "llava":
        model = import_transformers_llava(source)
        image_config = _image_config_from_transformers(source)
        template = template or default_template(model.config.text_config.model_type, tokenizer)
        processor = LlavaKitProcessor(
            tokenizer, template, image_config, num_image_tokens=model.config.num_image_tokens, image_token=IMAGE_TOKEN
        )
        return model, processor
    return _import_next(source, tokenizer, template)  # llava_next / llava_onevision, as _check_source found


def _save_next(exported, model: LlavaKitForCausalLM, processor: LlavaKitProcessor, output: Path) -> None:
    """A LlavaNext model with its LlavaNextProcessor, or a LlavaOnevision model with its processor files."""
    vision = model.config.vision_config
    exported.save_pretrained(output)
    if exported.config.model_type == "llava_next":
        hf_processor = transformers_llava_next_processor(
            processor,
            patch_size=vision.patch_size,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            num_additional_image_tokens=int(vision.model_type in VISION_TYPES_WITH_CLS),
        )
        hf_processor.save_pretrained(output)
        return
    save_onevision_processor(processor, model.config, output)


def export_checkpoint(checkpoint: str | Path, output: str | Path, overwrite: bool = False) -> None:
    """Write a transformers-native Llava / LlavaNext / LlavaOnevision folder.

    The folder holds the model, tokenizer, processor and chat template. A non-empty `output`
    is refused unless `overwrite` (then emptied before writing).
    """
    checkpoint = check_folder_exists(checkpoint)
    output = check_output_dir(output, overwrite, [("the source", checkpoint)])
    model, processor = load_checkpoint(checkpoint, LlavaKitProcessor)
    if model.config.image_mode != "fixed":
        exported = export_to_transformers_llava_next(model)  # raises for settings transformers cannot represent
        prepare_output_dir(output, overwrite)
        _save_next(exported, model, processor, output)
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
    prepare_output_dir(output, overwrite)
    exported.save_pretrained(output)
    hf_processor.save_pretrained(output)
