"""Checkpoint conversion: transformers' `LlavaForConditionalGeneration` <-> llavakit.

Why: a model trained here must be servable by anything that reads transformers' Llava
(vLLM, SGLang, transformers itself), and published LLaVA weights in transformers' layout
must load here. Only names differ between the layouts (`LLAVA_KEYS`, one table for both
directions); the tensors are reused as they are (no copy), so a conversion costs no memory.
The original haotian-liu/LLaVA layout is read by `llavakit.interop.original_llava`.

    model = import_transformers_llava("path/to/llava-hf-folder")
    hf_model = export_to_transformers(model); hf_model.save_pretrained("out")
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from llavakit.interop.keys import KeyTable, StateDict, rename
from llavakit.interop.loading import carry_generation_defaults, check_text_layout, load_strict
from llavakit.model.checkpoint import check_loading_info
from llavakit.model.configuration import LlavaKitConfig
from llavakit.model.connectors import mlp_depth
from llavakit.model.modeling import LlavaKitForCausalLM

logger = logging.getLogger(__name__)

# transformers' Llava projector is exactly linear_1 -> act -> linear_2.
_EXPORTABLE_CONNECTOR = "mlp2x_gelu"


# ---------------------------------------------------------------- configs (transformers' Llava)


def _text_config(config) -> Any:
    """A copy of the text config carrying the model's embedding tying (both sides keep it there too)."""
    text_config = copy.deepcopy(config.text_config)
    text_config.tie_word_embeddings = bool(config.tie_word_embeddings)
    return text_config


def llavakit_fields_from_transformers(config) -> dict[str, Any]:
    """LlavaKitConfig fields shared by every transformers Llava-family config (Llava, LlavaNext, OneVision).

    Raises ValueError when the projector has no llavakit connector.
    """
    if config.projector_hidden_act != "gelu":
        raise ValueError(
            f"projector_hidden_act {config.projector_hidden_act!r} has no llavakit connector: "
            "mlp2x_gelu uses exact GELU ('gelu')"
        )
    if not config.multimodal_projector_bias:
        raise ValueError("multimodal_projector_bias=False has no llavakit connector: mlp2x_gelu linears have biases")
    return dict(
        vision_config=copy.deepcopy(config.vision_config),
        text_config=_text_config(config),
        connector=_EXPORTABLE_CONNECTOR,
        vision_feature_layer=copy.copy(config.vision_feature_layer),
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token_id=config.image_token_id,
        tie_word_embeddings=bool(config.tie_word_embeddings),
    )


def transformers_fields_from_llavakit(config: LlavaKitConfig) -> dict[str, Any]:
    """Fields shared by every transformers Llava-family config, from a LlavaKitConfig.

    The caller checks that the connector is mlp2x_gelu.
    """
    return dict(
        vision_config=copy.deepcopy(config.vision_config),
        text_config=_text_config(config),
        image_token_index=config.image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_feature_layer=copy.copy(config.vision_feature_layer),
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(config.tie_word_embeddings),
    )


def llavakit_config_from_transformers(config: LlavaConfig) -> LlavaKitConfig:
    """The LlavaKitConfig of a transformers `LlavaConfig` (its projector becomes `mlp2x_gelu`)."""
    converted = LlavaKitConfig(**llavakit_fields_from_transformers(config))
    # llavakit derives the count from the geometry; transformers stores it (and some checkpoints
    # keep the 576 default whatever the geometry), so a mismatch is reported, not fatal.
    if config.image_seq_length != converted.num_image_tokens:
        logger.warning(
            "image_seq_length=%d in the transformers config, but the vision geometry and strategy give %d "
            "features per image; llavakit uses %d",
            config.image_seq_length,
            converted.num_image_tokens,
            converted.num_image_tokens,
        )
    return converted


def connector_export_reason(config: LlavaKitConfig) -> str:
    """Why `config.connector` has no transformers projector (the caller checks it is not `mlp2x_gelu`).

    transformers' Llava-family projector is linear_1 -> gelu -> linear_2 over every patch feature:
    an MLP of another depth has other weights, and a connector that sets its own token budget
    (avg_pool, c_abstractor, attn_pool, pixel_shuffle) gives a token count transformers cannot make.
    """
    depth = mlp_depth(config.connector)
    if depth == 1:
        return "it is a single linear layer, and transformers' projector has two (linear_1 -> gelu -> linear_2)"
    if depth is not None:
        return f"it has {depth} linear layers, and transformers' projector has two (linear_1 -> gelu -> linear_2)"
    output = config.connector_output
    if output.num_tokens != config.num_vision_features or output.grid != config.connector_input.grid:
        return (
            f"it sets its own visual token budget ({output.num_tokens} tokens per crop from "
            f"{config.num_vision_features} patch features), and transformers' projector maps every patch feature to "
            "one token (linear_1 -> gelu -> linear_2)"
        )
    return "it is not an MLP, and transformers' projector is linear_1 -> gelu -> linear_2"


def _connector_export_error(config: LlavaKitConfig) -> str:
    return (
        f"connector {config.connector!r} cannot be exported to transformers' LlavaForConditionalGeneration: "
        f"{connector_export_reason(config)}; only {_EXPORTABLE_CONNECTOR!r} maps"
    )


def transformers_config_from_llavakit(config: LlavaKitConfig) -> LlavaConfig:
    """The transformers `LlavaConfig` of a LlavaKitConfig; only the `mlp2x_gelu` connector maps."""
    if config.connector != _EXPORTABLE_CONNECTOR:
        raise ValueError(_connector_export_error(config))
    return LlavaConfig(image_seq_length=config.num_image_tokens, **transformers_fields_from_llavakit(config))


# ---------------------------------------------------------------- state-dict keys

# (llavakit name, transformers name): import and export are both derived from this one table.
LLAVA_KEYS = KeyTable(
    (
        ("vision_tower.encoder.{rest}", "model.vision_tower.{rest}"),
        ("multi_modal_projector.layers.0.{param}", "model.multi_modal_projector.linear_1.{param}"),
        ("multi_modal_projector.layers.1.{param}", "model.multi_modal_projector.linear_2.{param}"),
        ("language_model.model.{rest}", "model.language_model.{rest}"),
        ("language_model.lm_head.{rest}", "lm_head.{rest}"),
    )
)


def llavakit_state_dict_from_transformers(state_dict: StateDict) -> StateDict:
    """Rename a `LlavaForConditionalGeneration` state dict to `LlavaKitForCausalLM` keys (tensors shared)."""
    return rename(state_dict, LLAVA_KEYS.to_llavakit(), "transformers Llava")


def transformers_state_dict_from_llavakit(state_dict: StateDict) -> StateDict:
    """Rename a `LlavaKitForCausalLM` state dict (mlp2x_gelu connector) to `LlavaForConditionalGeneration` keys."""
    return rename(state_dict, LLAVA_KEYS.from_llavakit(), "llavakit")


# ---------------------------------------------------------------- models


def import_transformers_llava(
    source: str | Path | LlavaForConditionalGeneration, dtype: torch.dtype | None = None
) -> LlavaKitForCausalLM:
    """A `LlavaKitForCausalLM` from a transformers Llava model or a folder holding one.

    A model passed in shares its weight tensors with the result (no copy) unless `dtype` differs.
    """
    if isinstance(source, (str, Path)):
        folder = source
        source, info = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        check_loading_info(folder, info, problems=("missing_keys", "mismatched_keys"))
    config = llavakit_config_from_transformers(source.config)
    state_dict = llavakit_state_dict_from_transformers(source.state_dict())
    return load_strict(LlavaKitForCausalLM, config, state_dict, dtype or source.dtype)


def export_to_transformers(model: LlavaKitForCausalLM) -> LlavaForConditionalGeneration:
    """The same model as transformers' `LlavaForConditionalGeneration` (eval mode, same dtype, shared tensors).

    `save_pretrained` on the result writes a checkpoint that transformers, vLLM and SGLang read.
    """
    check_text_layout(model.language_model)
    config = transformers_config_from_llavakit(model.config)
    state_dict = transformers_state_dict_from_llavakit(model.state_dict())
    exported = load_strict(LlavaForConditionalGeneration, config, state_dict, model.dtype)
    carry_generation_defaults(model, exported)
    return exported
