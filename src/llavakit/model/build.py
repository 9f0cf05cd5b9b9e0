"""Compose a LLaVA model from named parts: a vision encoder, a connector and a language model.

Each backbone is given either as a transformers config (a tiny random model, built in
milliseconds) or as a hub name / local folder loaded with `from_pretrained`, so the same
spec serves tests, the demo and a 7B recipe. A full CLIP/SigLIP checkpoint (text + vision)
is fine: only its vision half is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPVisionModel,
    PreTrainedConfig,
    PreTrainedModel,
    SiglipVisionModel,
)

from llavakit.model.configuration import LlavaKitConfig
from llavakit.model.modeling import LlavaKitForCausalLM

# Vision models by the model_type of their (vision or full) config.
_VISION_CLASSES = {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
}

Part = str | dict[str, Any] | PreTrainedConfig


@dataclass
class ModelSpec:
    """What a LLaVA model is made of; `vision` / `language` are a name or path, a config or a config dict."""

    vision: Part
    language: Part
    image_token_id: int
    connector: str = "mlp2x_gelu"
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    dtype: str | None = None


def _as_config(part: dict[str, Any] | PreTrainedConfig) -> PreTrainedConfig:
    if isinstance(part, PreTrainedConfig):
        return part
    values = dict(part)
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"a backbone config dict needs a 'model_type' key, got keys {sorted(part)}")
    return AutoConfig.for_model(model_type, **values)


def _vision_class(model_type: str) -> type[PreTrainedModel]:
    if model_type not in _VISION_CLASSES:
        raise ValueError(f"unsupported vision model type {model_type!r}; supported: {sorted(_VISION_CLASSES)}")
    return _VISION_CLASSES[model_type]


def load_vision_encoder(part: Part, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A CLIP/SigLIP vision model: random from a config, or pretrained from a name/folder."""
    if isinstance(part, str):
        model_type = AutoConfig.from_pretrained(part).model_type
        return _vision_class(model_type).from_pretrained(part, dtype=dtype)
    config = _as_config(part)
    if hasattr(config, "vision_config") and config.vision_config is not None:
        config = config.vision_config
    return _vision_class(config.model_type)._from_config(config, dtype=dtype)


def load_language_model(part: Part, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Any AutoModelForCausalLM: random from a config, or pretrained from a name/folder."""
    if isinstance(part, str):
        return AutoModelForCausalLM.from_pretrained(part, dtype=dtype)
    return AutoModelForCausalLM.from_config(_as_config(part), dtype=dtype)


def compose_model(spec: ModelSpec, vision: PreTrainedModel, language: PreTrainedModel) -> LlavaKitForCausalLM:
    """Wrap loaded backbones with a fresh connector; the config is read off the backbones."""
    config = LlavaKitConfig(
        vision_config=vision.config,
        text_config=language.config,
        connector=spec.connector,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        image_token_id=spec.image_token_id,
    )
    return LlavaKitForCausalLM(config, vision_encoder=vision, language_model=language)


def build_model(spec: ModelSpec) -> LlavaKitForCausalLM:
    """Load or build both backbones, then wrap them with a fresh connector."""
    dtype = getattr(torch, spec.dtype) if spec.dtype else None
    vision = load_vision_encoder(spec.vision, dtype)
    language = load_language_model(spec.language, dtype)
    if spec.image_token_id >= language.config.vocab_size:
        language.resize_token_embeddings(spec.image_token_id + 1)
    model = compose_model(spec, vision, language)
    return model.to(dtype) if dtype else model
