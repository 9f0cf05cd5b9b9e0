"""Checkpoint conversion: transformers' `LlavaNextForConditionalGeneration` and
`LlavaOnevisionForConditionalGeneration` <-> llavakit.

Why: LLaVA-NeXT and LLaVA-OneVision checkpoints published in transformers' layout must load
here, and a high-resolution model trained here must be servable by transformers, vLLM and
SGLang. Their weights are a Llava checkpoint plus one `model.image_newline` vector; what
differs is the image layout, carried by the config:

    transformers                          llavakit
    LlavaNext   image_grid_pinpoints  ->  image_mode="anyres", image_grid_pinpoints
    LlavaOnevision vision_aspect_ratio ->  image_mode="anyres_max_N", multi_image_base_only,
                video_token_index          video_token_id (bilinear 2x2 pooling, one newline)

Tensors are reused as they are (no copy). Usage:

    model = import_transformers_llava_next("path/to/llava-next-or-onevision-folder")
    hf_model = export_to_transformers_llava_next(model); hf_model.save_pretrained("out")
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedModel,
)

from llavakit.interop.keys import StateDict, rename
from llavakit.interop.loading import carry_generation_defaults, check_text_layout, load_strict
from llavakit.interop.transformers_llava import (
    LLAVA_KEYS,
    connector_export_reason,
    llavakit_fields_from_transformers,
    transformers_fields_from_llavakit,
)
from llavakit.model import anyres
from llavakit.model.checkpoint import check_loading_info
from llavakit.model.configuration import LlavaKitConfig
from llavakit.model.modeling import LlavaKitForCausalLM

logger = logging.getLogger(__name__)

NEXT_MODEL_TYPES = ("llava_next", "llava_onevision")
_NEWLINE_TRANSFORMERS = "model.image_newline"
_NEWLINE_LLAVAKIT = "image_newline"
# LlavaNext and LlavaOnevision weights: Llava's plus the newline vector; both directions derive from it.
NEXT_KEYS = LLAVA_KEYS.extended((_NEWLINE_LLAVAKIT, _NEWLINE_TRANSFORMERS))
_EXPORTABLE_CONNECTOR = "mlp2x_gelu"
# OneVision's fixed video recipe in transformers: 2x2 bilinear pooling, one newline per video.
_ONEVISION_VIDEO = {"video_pool_mode": "bilinear", "video_pool_stride": 2, "video_newline": "one_token"}

NextConfig = LlavaNextConfig | LlavaOnevisionConfig
NextModel = LlavaNextForConditionalGeneration | LlavaOnevisionForConditionalGeneration


# ---------------------------------------------------------------- configs


def _pinpoints(config) -> list[list[int]]:
    return [[int(h), int(w)] for h, w in config.image_grid_pinpoints]


def llavakit_config_from_transformers_next(config: NextConfig) -> LlavaKitConfig:
    """The LlavaKitConfig of a transformers LlavaNext or LlavaOnevision config."""
    fields = dict(
        llavakit_fields_from_transformers(config),
        image_grid_pinpoints=_pinpoints(config),
        use_image_newline=True,
        image_base_first=True,
    )
    if config.model_type == "llava_onevision":
        anyres.parse_anyres_max(config.vision_aspect_ratio)  # transformers reads N from this string
        fields.update(
            image_mode=config.vision_aspect_ratio,
            multi_image_base_only=True,
            video_token_id=config.video_token_id,
            **_ONEVISION_VIDEO,
        )
    elif config.model_type == "llava_next":
        fields.update(image_mode="anyres", multi_image_base_only=False)
    else:
        raise ValueError(f"model_type {config.model_type!r} is neither llava_next nor llava_onevision")
    return LlavaKitConfig(**fields)


def transformers_next_model_type(config: LlavaKitConfig) -> str:
    """`llava_next` or `llava_onevision`: the transformers class that represents `config`.

    Raises a ValueError saying why when none does.
    """
    problems = []
    if config.connector != _EXPORTABLE_CONNECTOR:
        problems.append(f"connector {config.connector!r} ({connector_export_reason(config)})")
    if not config.newline_in_images:
        problems.append(
            "images without newline vectors (transformers always appends image_newline; "
            "train with use_image_newline: true)"
        )
    if not config.base_first:
        problems.append(
            "base image features after the crops, LLaVA-1.5-HD's order (transformers puts them first; the nearest "
            "exportable model trains with image_base_first: true, model.image_base_first=true in a recipe)"
        )
    if config.image_mode == "anyres":
        model_type = "llava_next"
        if config.base_only_for_multi_image:
            problems.append("multi_image_base_only=True (LlavaNext patches every image; OneVision uses anyres_max_N)")
        if config.video_token_id is not None:
            problems.append("video input (LlavaNext has none; use image_mode='anyres_max_N' for OneVision)")
    elif config.max_crops is not None:
        model_type = "llava_onevision"
        if not config.base_only_for_multi_image:
            problems.append("multi_image_base_only=False (OneVision encodes multi-image samples at base resolution)")
        if config.video_token_id is None:
            problems.append("no video_token_id (LlavaOnevision needs one; add a <video> token)")
        for field, value in _ONEVISION_VIDEO.items():
            if getattr(config, field) != value:
                problems.append(f"{field}={getattr(config, field)!r} (OneVision in transformers uses {value!r})")
    elif config.image_mode == "hd":
        model_type = "llava_next"  # LLaVA-1.5-HD is LLaVA-NeXT over the HD canvases when the base image comes first
        if config.base_only_for_multi_image or config.video_token_id is not None:
            problems.append("multi-image base-only or video input (LlavaNext has neither)")
    else:
        raise ValueError(
            f"image_mode {config.image_mode!r} has no LlavaNext/LlavaOnevision form; fixed-resolution models export "
            "to transformers' Llava (llavakit.interop.transformers_llava.export_to_transformers)"
        )
    if problems:
        raise ValueError(f"cannot export to transformers' {model_type}: " + "; ".join(problems))
    return model_type


def transformers_config_from_llavakit_next(config: LlavaKitConfig) -> NextConfig:
    """The transformers LlavaNextConfig / LlavaOnevisionConfig of a high-resolution LlavaKitConfig."""
    model_type = transformers_next_model_type(config)
    common = dict(
        transformers_fields_from_llavakit(config),
        image_grid_pinpoints=[[h, w] for h, w in config.grid_pinpoints],
    )
    if model_type == "llava_next":
        return LlavaNextConfig(image_seq_length=config.num_image_tokens, **common)
    return LlavaOnevisionConfig(
        video_token_index=config.video_token_id, vision_aspect_ratio=config.image_mode, **common
    )


# ---------------------------------------------------------------- state dicts


def llavakit_state_dict_from_transformers_next(state_dict: StateDict) -> StateDict:
    """Rename a LlavaNext / LlavaOnevision state dict to llavakit keys (tensors shared; unknown keys raise)."""
    if _NEWLINE_TRANSFORMERS not in state_dict:
        raise ValueError(f"the state dict has no {_NEWLINE_TRANSFORMERS}: not a LlavaNext / LlavaOnevision checkpoint")
    return rename(state_dict, NEXT_KEYS.to_llavakit(), "transformers LlavaNext / LlavaOnevision")


def transformers_next_state_dict_from_llavakit(state_dict: StateDict) -> StateDict:
    """Rename a high-resolution llavakit state dict (mlp2x_gelu, image_newline) to LlavaNext / LlavaOnevision keys."""
    if _NEWLINE_LLAVAKIT not in state_dict:
        raise ValueError(
            "the llavakit state dict has no image_newline (a model whose images carry newline vectors has one)"
        )
    return rename(state_dict, NEXT_KEYS.from_llavakit(), "llavakit")


# ---------------------------------------------------------------- models


def _transformers_class(model_type: str) -> type[PreTrainedModel]:
    return {"llava_next": LlavaNextForConditionalGeneration, "llava_onevision": LlavaOnevisionForConditionalGeneration}[
        model_type
    ]


def import_transformers_llava_next(
    source: str | Path | NextModel, dtype: torch.dtype | None = None
) -> LlavaKitForCausalLM:
    """A `LlavaKitForCausalLM` from a transformers LlavaNext / LlavaOnevision model or a folder holding one.

    A model passed in shares its weight tensors with the result (no copy) unless `dtype` differs.
    """
    if isinstance(source, (str, Path)):
        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type not in NEXT_MODEL_TYPES:
            raise ValueError(f"{source}: model_type {model_type!r} is neither llava_next nor llava_onevision")
        folder = source
        source, info = _transformers_class(model_type).from_pretrained(folder, dtype=dtype, output_loading_info=True)
        check_loading_info(folder, info, problems=("missing_keys", "mismatched_keys"))
    config = llavakit_config_from_transformers_next(source.config)
    state_dict = llavakit_state_dict_from_transformers_next(source.state_dict())
    return load_strict(LlavaKitForCausalLM, config, state_dict, dtype or source.dtype)


def export_to_transformers_llava_next(model: LlavaKitForCausalLM) -> NextModel:
    """The same model as transformers' LlavaNext (`anyres`, or `hd` with the base image first) or
    LlavaOnevision (`anyres_max_N`), in eval mode, same dtype, tensors shared.

    Raises a ValueError naming every setting transformers cannot represent.
    """
    check_text_layout(model.language_model)
    config = transformers_config_from_llavakit_next(model.config)
    state_dict = transformers_next_state_dict_from_llavakit(model.state_dict())
    exported = load_strict(_transformers_class(config.model_type), config, state_dict, model.dtype)
    carry_generation_defaults(model, exported)
    return exported
