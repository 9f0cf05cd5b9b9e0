"""Checkpoint folders in and out: weights (transformers_llava.py, transformers_next.py,
original_llava.py, original_next.py, original_lora.py) plus the tokenizer and processor files
(processor_export.py).

`import_checkpoint` reads a transformers Llava, LlavaNext or LlavaOnevision folder, an
original LLaVA / LLaVA-NeXT / OneVision folder, or an original trainer's LoRA output (merged
with its base language model), and writes a llavakit checkpoint (model + `LlavaKitProcessor`).
It says which conversation template it chose and why (`ImportResult.template_line()`).
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

import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

from llavakit.errors import CheckpointError
from llavakit.interop.original_llava import (
    import_original_llava,
    is_original_llava_checkpoint,
    read_original_llava_config,
)
from llavakit.interop.original_lora import (
    check_lora_folder,
    is_original_lora_folder,
    lora_base_folder,
    merged_lora_weights,
)
from llavakit.interop.processor_export import (
    save_onevision_processor,
    transformers_llava_next_processor,
    transformers_llava_processor,
)
from llavakit.interop.template_choice import TemplateChoice, default_template
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

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
# What `_check_source` found the source to be.
_ORIGINAL_LORA = "original LoRA output"


@dataclass(frozen=True)
class ImportResult:
    """What `import_checkpoint` wrote: the model and processor, the template chosen and why, the source's layout."""

    model: LlavaKitForCausalLM
    processor: LlavaKitProcessor
    template: TemplateChoice
    source_layout: str

    def template_line(self) -> str:
        """`template: qwen_1_5 (from the Qwen2 language model; pass --template to choose another)`."""
        if self.template.given:
            return f"template: {self.template.name} ({self.template.reason})"
        return f"template: {self.template.name} ({self.template.reason}; pass --template to choose another)"


def _template_choice(
    template: str | None, text_model_type: str, tokenizer: PreTrainedTokenizerBase, original: bool = False
) -> TemplateChoice:
    """The caller's template, else the one the language model family was tuned with."""
    if template is not None:
        return TemplateChoice(template, "as given", given=True)
    return default_template(text_model_type, tokenizer, original=original)


def _source_kind(source: Path) -> str:
    """The source's model_type, or `_ORIGINAL_LORA`; a llavakit or foreign folder is refused."""
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
    return _ORIGINAL_LORA if is_original_lora_folder(source) else model_type


def _check_source(source: Path) -> str:
    """The source folder's kind (`_source_kind`), after its config and weight files are checked."""
    kind = _source_kind(source)
    check_json_files(source)
    if kind == _ORIGINAL_LORA:
        check_lora_folder(source)
    elif not weight_files(source):
        raise CheckpointError(f"{source} has no model weights (model.safetensors, pytorch_model.bin or an index)")
    return kind


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _tokenizer_folder(source: Path, base: Path | None) -> Path:
    """Where the tokenizer is: the source, else its base (the original trainer saves a LoRA output without one)."""
    if _has_tokenizer(source):
        return source
    if base is not None and _has_tokenizer(base):
        return base
    where = f"{source} (nor its base {base})" if base is not None else f"{source}"
    raise CheckpointError(
        f"{where} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): "
        "copy its language model's tokenizer into the folder"
    )


def _base_folder(source: Path, kind: str, base: str | Path | None) -> Path | None:
    """The base language model of a LoRA output; `base` for any other source is a mistake, named."""
    if kind == _ORIGINAL_LORA:
        return lora_base_folder(source, base)
    if base is not None:
        raise CheckpointError(
            f"--base {base} is for LoRA output folders (adapter_config.json + non_lora_trainables.bin); "
            f"{source} holds a whole model"
        )
    return None


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


def _import_next(
    source: Path, tokenizer: PreTrainedTokenizerBase, template: str | None
) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor, TemplateChoice]:
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
    choice = _template_choice(template, model.config.text_config.model_type, tokenizer)
    processor = LlavaKitProcessor.from_model_config(tokenizer, model.config, choice.name, image_config=image_config)
    return model, processor, choice


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """`token`'s id, added to the tokenizer as a special token when it has none (original LLaVA splices at -200)."""
    if token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(token)


def _original_layout_name(source: Path, base: Path | None) -> str:
    layout = read_original_llava_config(source).layout
    name = "original LLaVA" if not layout.is_grid else f"original LLaVA-NeXT / OneVision ({layout.image_mode})"
    return f"{name} LoRA output merged into {base}" if base is not None else name


def _import_original(
    source: Path,
    tokenizer: PreTrainedTokenizerBase,
    template: str | None,
    vision_tower: str | None,
    base: Path | None,
) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor, TemplateChoice]:
    """An original LLaVA / LLaVA-NeXT / OneVision folder, or a LoRA output merged into `base`."""
    original = read_original_llava_config(source)
    image_token_id = _token_id(tokenizer, IMAGE_TOKEN)
    video_token_id = _token_id(tokenizer, VIDEO_TOKEN) if original.layout.video is not None else None
    weights = merged_lora_weights(source, base, original.text_config) if base is not None else None
    model = import_original_llava(
        source,
        image_token_id=image_token_id,
        vision_tower_path=vision_tower,
        video_token_id=video_token_id,
        state_dict=weights,
    )
    choice = _template_choice(template, model.config.text_config.model_type, tokenizer, original=True)
    processor = LlavaKitProcessor.from_model_config(
        tokenizer, model.config, choice.name, image_aspect=original.layout.processor_mode
    )
    return model, processor, choice


def import_checkpoint(
    source: str | Path,
    output: str | Path,
    template: str | None = None,
    vision_tower: str | None = None,
    overwrite: bool = False,
    base: str | Path | None = None,
) -> ImportResult:
    """Convert `source` into a llavakit checkpoint at `output`; returns what was written and the template chosen.

    `source`: a transformers Llava / LlavaNext / LlavaOnevision folder, an original LLaVA /
    LLaVA-NeXT / OneVision folder, or an original trainer's LoRA output, merged into `base`
    (default: its adapter_config.json's base_model_name_or_path). `vision_tower`: a local
    folder for the tower an original config's `mm_vision_tower` names. A non-empty `output`
    is refused unless `overwrite` (then emptied before writing).
    """
    source = check_folder_exists(source, "source folder")
    output = check_output_dir(output, overwrite, [("the source", source)])
    kind = _check_source(source)
    base_folder = _base_folder(source, kind, base)
    tokenizer_folder = _tokenizer_folder(source, base_folder)
    with checkpoint_errors(tokenizer_folder, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    with checkpoint_errors(source, "model"):
        model, processor, choice = _import_model(source, kind, tokenizer, template, vision_tower, base_folder)
        layout = _source_layout(source, kind, base_folder)
    logger.info("imported %s from %s; %s", layout, source, choice.reason)
    prepare_output_dir(output, overwrite)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    return ImportResult(model=model, processor=processor, template=choice, source_layout=layout)


def _source_layout(source: Path, kind: str, base: Path | None) -> str:
    """The source's layout in words, for the import's report."""
    if is_original_llava_checkpoint(source):
        return _original_layout_name(source, base)
    names = {"llava": "transformers Llava", "llava_next": "transformers LlavaNext"}
    return names.get(kind, "transformers LlavaOnevision")


def _import_model(
    source: Path,
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    template: str | None,
    vision_tower: str | None,
    base: Path | None,
) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor, TemplateChoice]:
    """The converted model, its processor and the template chosen, by the source's layout."""
    if is_original_llava_checkpoint(source):
        return _import_original(source, tokenizer, template, vision_tower, base)
    if kind == "llava":
        return _import_llava(source, tokenizer, template)
    return _import_next(source, tokenizer, template)  # llava_next / llava_onevision, as _check_source found


def _import_llava(
    source: Path, tokenizer: PreTrainedTokenizerBase, template: str | None
) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor, TemplateChoice]:
    """A transformers Llava folder: the model, and a processor with its image settings."""
    model = import_transformers_llava(source)
    image_config = _image_config_from_transformers(source)
    choice = _template_choice(template, model.config.text_config.model_type, tokenizer)
    processor = LlavaKitProcessor(
        tokenizer, choice.name, image_config, num_image_tokens=model.config.num_image_tokens, image_token=IMAGE_TOKEN
    )
    return model, processor, choice


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
