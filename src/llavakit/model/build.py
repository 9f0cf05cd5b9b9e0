"""What a LLaVA model is made of (`ModelSpec`), and the model built from it.

A vision encoder, a connector and a language model. Each backbone is given either as a
transformers config (a tiny random model, built in milliseconds) or as a hub name / local
folder loaded with `from_pretrained`, so the same spec serves tests, the demo and a 7B recipe.
A full CLIP/SigLIP checkpoint (text + vision) is fine: only its vision half is loaded.

`ModelSpec` is the one schema of a model: the `model` section of a training recipe and the
files in configs/models/ are both read into it through `model_spec_layers`. A spec mapping may
include a spec file by path (`spec: configs/models/x.yaml`): the file's values are the base, the
mapping's own keys replace them. `model_config(spec)` gives a spec's `LlavaKitConfig` (shapes
only); `build_model(spec)` the model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
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

from llavakit.config_files import Layer, load_structured, read_yaml, union_field
from llavakit.model.configuration import LlavaKitConfig
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.model.moe import MoeSpec, apply_moe, moe_text_config, routes_tokens

# Vision models by the model_type of their (vision or full) config.
_VISION_CLASSES = {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
}

# The key of a spec mapping that includes a spec file (its values are the base).
INCLUDE_KEY = "spec"

Part = str | dict[str, Any] | PreTrainedConfig


def _is_part(value: Any) -> bool:
    return value is None or isinstance(value, (str, Mapping, PreTrainedConfig))


def _is_layers(value: Any) -> bool:
    def is_int(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    return is_int(value) or (isinstance(value, list) and bool(value) and all(is_int(item) for item in value))


def _is_pinpoints(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    if not isinstance(value, (list, tuple)):
        return False
    pairs = all(isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in value)
    return pairs and all(isinstance(side, int) and not isinstance(side, bool) for pair in value for side in pair)


_PART = "a hub name, a folder or a config mapping with a model_type"


@dataclass
class VideoSpec:
    """How a video's frames become `<video>` tokens (OneVision: bilinear 2x2 pooling, one newline).

    `pool_mode`: `bilinear`, `average` or `max`; `pool_stride`: the pooling factor per side;
    `newline`: `grid`, `frame`, `one_token` or `none`. Null takes OneVision's choice; any of them
    set needs `video_token`.
    """

    pool_mode: str | None = None
    pool_stride: int | None = None
    newline: str | None = None


# OneVision's video pooling: what a null `VideoSpec` field means.
VIDEO_DEFAULTS = {"pool_mode": "bilinear", "pool_stride": 2, "newline": "one_token"}


@dataclass
class ModelSpec:
    """What a LLaVA model is made of (see configs/README.md and `LlavaKitConfig` for every field).

    `vision` / `language`: a hub name or local folder (pretrained weights), or a config mapping
    with a `model_type` key (random weights; shapes only), or a transformers config.
    `tokenizer`: a hub name or folder, `tiny` for the in-process tiny tokenizer, or null for the
    language model's (training only). `image_token_id` / `video_token_id`: ids of `image_token` /
    `video_token`; null takes them from the tokenizer (training), `build_model` needs them given.
    `video_token`: null for no video input; `video`: how each frame's feature map is pooled
    (`VideoSpec`). The grid fields are `LlavaKitConfig`'s; null ones take the mode's defaults, and
    one set for a mode that does not use it is an error (`mode_problems`).
    `crop_size`: side of one encoder input when it differs from the tower config's `image_size`;
    it becomes the tower's `image_size`, so only a tower built from a config can take one.
    `checkpoint`: start from a saved llavakit model folder instead (its processor too; training).
    `connector_weights`: a stage-1 run folder (or its `trainable.safetensors`) loaded after
    building, as LLaVA's `--pretrain_mm_mlp_adapter` (training).
    `connector_tokens` / `connector_ratio`: the connector's visual token budget per crop (`avg_pool`,
    `c_abstractor`, `attn_pool`: N tokens, default 144; `pixel_shuffle`: r, default 2; see
    `llavakit.model.connectors`); null takes the connector's default, and one set for a connector
    that does not read it is an error.
    `moe`: the language model's experts (`MoeSpec`): sparse upcycling of a dense Llama / Mistral /
    Qwen2 / Qwen3 into its transformers MoE model, and the router balance loss's weight.
    `name`: documentation only (the model a spec file describes), recorded with the run.
    """

    name: str | None = None
    vision: Any = union_field(None, _is_part, _PART)
    language: Any = union_field(None, _is_part, _PART)
    tokenizer: str | None = None
    connector: str = "mlp2x_gelu"
    connector_tokens: int | None = None
    connector_ratio: int | None = None
    vision_feature_layer: Any = union_field(-2, _is_layers, "an integer or a list of integers")
    vision_feature_select_strategy: str = "default"
    image_token: str = "<image>"
    image_token_id: int | None = None
    video_token: str | None = None
    video_token_id: int | None = None
    image_mode: str = "fixed"
    image_grid_pinpoints: Any = union_field(
        None, _is_pinpoints, "a list of [height, width] pairs or a string such as '(1x1),...,(6x6)'"
    )
    hd_max_cells: int | None = None
    crop_size: int | None = None
    use_image_newline: bool | None = None
    image_base_first: bool | None = None
    multi_image_base_only: bool | None = None
    video: VideoSpec = field(default_factory=VideoSpec)
    moe: MoeSpec = field(default_factory=MoeSpec)
    checkpoint: str | None = None
    connector_weights: str | None = None
    dtype: str | None = None
    attn_implementation: str | None = None


# ---- spec files --------------------------------------------------------------------------------


def model_spec_layers(data: Mapping[str, Any], source: Path, seen: tuple[Path, ...] = ()) -> list[Layer]:
    """A spec mapping as merge layers: the spec file it includes (recursively) first, then its own keys.

    A relative include is looked up beside `source` first, then in the working directory.
    """
    own = dict(data)
    include = own.pop(INCLUDE_KEY, None)
    if include is None:
        return [(source, own)]
    path = _include_path(include, source)
    if path.resolve() in seen:
        raise ValueError(f"{source}: model spec {path} includes itself")
    included = model_spec_layers(read_yaml(path, "model spec"), path, (*seen, path.resolve()))
    return [*included, (source, own)]


def _include_path(value: Any, source: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{source}: '{INCLUDE_KEY}' must be the path of a model spec YAML, got {value!r}")
    candidates = [Path(value)] if Path(value).is_absolute() else [source.parent / value, Path.cwd() / value]
    for path in candidates:
        if path.is_file():
            return path
    looked = " or ".join(str(path) for path in candidates)
    raise ValueError(f"{source}: the included model spec {value!r} does not exist (looked for {looked})")


def load_model_spec(path: str | Path, overrides: list[str] | None = None) -> ModelSpec:
    """A model spec YAML (configs/models/*.yaml) as a `ModelSpec`; unknown keys and bad values raise."""
    path = Path(path)
    spec = load_structured(ModelSpec, model_spec_layers(read_yaml(path, "model spec"), path), overrides or [])
    problems = mode_problems(spec, prefix="")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return spec


# ---- configs -----------------------------------------------------------------------------------


def model_config(spec: ModelSpec) -> LlavaKitConfig:
    """The `LlavaKitConfig` of `spec`: shapes only, no weights (a named backbone's config.json is read)."""
    text = moe_text_config(_part_config(spec.language), spec.moe)
    return llava_config(spec, _vision_config(_part_config(vision_part(spec))), text)


# Keys of a spec that only some image modes read: key -> (modes that read it, what it is for).
_MODE_KEYS = {
    "image_grid_pinpoints": (("hd", "anyres", "anyres_max_N"), "the grid modes' canvases"),
    "hd_max_cells": (("hd",), "the HD grids' largest cell count"),
    "image_base_first": (("hd", "anyres", "anyres_max_N"), "where the base image goes among the crops"),
    "multi_image_base_only": (("hd", "anyres", "anyres_max_N"), "base-resolution images in multi-image samples"),
}


def _mode_family(mode: str) -> str:
    return "anyres_max_N" if mode.startswith("anyres_max_") else mode


def mode_problems(spec: ModelSpec, prefix: str = "model.") -> list[str]:
    """Keys set that the spec's image mode or its lack of video never reads, each named with the key it clashes with.

    A setting silently ignored is a run that trains something else than its recipe says.
    """
    problems = []
    family = _mode_family(spec.image_mode)
    for key, (modes, purpose) in _MODE_KEYS.items():
        value = getattr(spec, key)
        if value is not None and family not in modes:
            problems.append(
                f"{prefix}{key}={value!r} ({purpose}) does not apply to {prefix}image_mode={spec.image_mode!r}; "
                f"it is read by image_mode {' / '.join(modes)}"
            )
    if spec.video_token is None:
        problems += [
            f"{prefix}video.{key}={value!r} needs video input, but {prefix}video_token is null"
            for key, value in vars(spec.video).items()
            if value is not None
        ]
    return problems


def vision_part(spec: ModelSpec) -> Part:
    """The spec's vision backbone with `crop_size` as its `image_size` (a config mapping only)."""
    part, crop = spec.vision, spec.crop_size
    if crop is None or part is None:
        return part
    if isinstance(part, str):
        size = int(_vision_config(AutoConfig.from_pretrained(part)).image_size)
        if size != crop:
            raise ValueError(
                f"model.crop_size={crop} differs from the image_size {size} of the pretrained tower {part!r}: "
                "pretrained position embeddings are not resized; drop crop_size or choose a tower trained at that size"
            )
        return part
    config = copy.deepcopy(_as_config(part))
    (getattr(config, "vision_config", None) or config).image_size = crop
    return config


def llava_config(spec: ModelSpec, vision: PreTrainedConfig, text: PreTrainedConfig) -> LlavaKitConfig:
    """The backbones' configs with the choices `spec` makes between them."""
    return LlavaKitConfig(
        vision_config=vision,
        text_config=text,
        connector=spec.connector,
        connector_tokens=spec.connector_tokens,
        connector_ratio=spec.connector_ratio,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        image_mode=spec.image_mode,
        image_grid_pinpoints=spec.image_grid_pinpoints,
        hd_max_cells=6 if spec.hd_max_cells is None else spec.hd_max_cells,
        use_image_newline=spec.use_image_newline,
        image_base_first=spec.image_base_first,
        multi_image_base_only=spec.multi_image_base_only,
        **{f"video_{key}": value for key, value in video_settings(spec.video).items()},
        **_token_ids(spec),
    )


def video_settings(video: VideoSpec) -> dict[str, Any]:
    """`video`'s pooling with OneVision's choice where it is null."""
    chosen = {key: getattr(video, key) for key in VIDEO_DEFAULTS}
    return {key: VIDEO_DEFAULTS[key] if value is None else value for key, value in chosen.items()}


def _token_ids(spec: ModelSpec) -> dict[str, int | None]:
    if spec.image_token_id is None:
        raise ValueError(f"the model spec needs image_token_id: the tokenizer's id of {spec.image_token!r}")
    if (spec.video_token is None) != (spec.video_token_id is None):
        raise ValueError(
            "video input needs both video_token and video_token_id (the tokenizer's id of the token); "
            f"got video_token={spec.video_token!r}, video_token_id={spec.video_token_id!r}"
        )
    return {"image_token_id": spec.image_token_id, "video_token_id": spec.video_token_id}


def _part_config(part: Part | None) -> PreTrainedConfig:
    if part is None:
        raise ValueError("the model spec needs both vision and language")
    return AutoConfig.from_pretrained(part) if isinstance(part, str) else _as_config(part)


def _vision_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The vision half of a full CLIP/SigLIP config; a vision config as it is."""
    vision = getattr(config, "vision_config", None)
    return vision if vision is not None else config


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
    config = _vision_config(_as_config(part))
    return _vision_class(config.model_type)._from_config(config, dtype=dtype)


def load_language_model(part: Part, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Any AutoModelForCausalLM: random from a config, or pretrained from a name/folder."""
    if isinstance(part, str):
        return AutoModelForCausalLM.from_pretrained(part, dtype=dtype)
    return AutoModelForCausalLM.from_config(_as_config(part), dtype=dtype)


def compose_model(spec: ModelSpec, vision: PreTrainedModel, language: PreTrainedModel) -> LlavaKitForCausalLM:
    """Wrap loaded backbones with a fresh connector; the config is read off the backbones.

    The backbones' sub-configs lose their attention implementation when they join the
    composite config, and a decoder without one runs with no causal mask: it is set again
    (the spec's choice, else the language model's, else sdpa) on the whole model. An MoE
    decoder's experts implementation (e.g. grouped_mm) is lost the same way and set again.
    """
    attention = spec.attn_implementation or language.config._attn_implementation or "sdpa"
    experts = language.config._experts_implementation if routes_tokens(language.config) else None
    config = llava_config(spec, vision.config, language.config)
    model = LlavaKitForCausalLM(config, vision_encoder=vision, language_model=language)
    model.set_attn_implementation(attention)
    if experts is not None:
        model.language_model.set_experts_implementation(experts)
    return model


def build_model(spec: ModelSpec) -> LlavaKitForCausalLM:
    """Load or build both backbones, then wrap them with a fresh connector."""
    ids = [token_id for token_id in _token_ids(spec).values() if token_id is not None]
    if spec.vision is None or spec.language is None:
        raise ValueError("the model spec needs both vision and language")
    dtype = getattr(torch, spec.dtype) if spec.dtype else None
    vision = load_vision_encoder(vision_part(spec), dtype)
    language = apply_moe(load_language_model(spec.language, dtype), spec.moe)
    if max(ids) >= language.config.vocab_size:
        language.resize_token_embeddings(max(ids) + 1)
    model = compose_model(spec, vision, language)
    return model.to(dtype) if dtype else model
