"""Checkpoint conversion: transformers' `LlavaForConditionalGeneration` and original LLaVA <-> llavakit.

Why: a model trained here must be servable by anything that reads transformers' Llava
(vLLM, SGLang, transformers itself), and published LLaVA weights, in either transformers'
layout or the original haotian-liu/LLaVA layout, must load here. Only names differ between
the layouts; the tensors are reused as they are (no copy), so a conversion costs no memory.

    model = import_transformers_llava("path/to/llava-hf-folder")
    hf_model = export_to_transformers(model); hf_model.save_pretrained("out")
    model = import_original_llava("path/to/llava-v1.5-7b", image_token_id=len(tokenizer) - 1)
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedConfig,
)

from llavakit.model.configuration import VISION_TYPES_WITH_CLS, LlavaKitConfig
from llavakit.model.connectors import mlp_depth
from llavakit.model.modeling import LlavaKitForCausalLM

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
KeyRule = tuple[re.Pattern, Callable[[re.Match], str]]

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


def _connector_export_error(connector: str) -> str:
    depth = mlp_depth(connector)
    if depth == 1:
        why = "it is a single linear layer, and transformers' projector has two (linear_1 -> gelu -> linear_2)"
    elif depth is not None:
        why = f"it has {depth} linear layers, and transformers' projector has two (linear_1 -> gelu -> linear_2)"
    else:
        why = "it is not an MLP, and transformers' projector is linear_1 -> gelu -> linear_2"
    return (
        f"connector {connector!r} cannot be exported to transformers' LlavaForConditionalGeneration: {why}; "
        f"only {_EXPORTABLE_CONNECTOR!r} maps"
    )


def transformers_config_from_llavakit(config: LlavaKitConfig) -> LlavaConfig:
    """The transformers `LlavaConfig` of a LlavaKitConfig; only the `mlp2x_gelu` connector maps."""
    if config.connector != _EXPORTABLE_CONNECTOR:
        raise ValueError(_connector_export_error(config.connector))
    return LlavaConfig(image_seq_length=config.num_image_tokens, **transformers_fields_from_llavakit(config))


# ---------------------------------------------------------------- state-dict key maps


def _rule(pattern: str, replace: Callable[[re.Match], str]) -> KeyRule:
    return re.compile(pattern), replace


_FROM_TRANSFORMERS: list[KeyRule] = [
    _rule(r"^model\.vision_tower\.(.+)$", lambda m: f"vision_tower.encoder.{m[1]}"),
    _rule(
        r"^model\.multi_modal_projector\.linear_([12])\.(weight|bias)$",
        lambda m: f"multi_modal_projector.layers.{int(m[1]) - 1}.{m[2]}",
    ),
    _rule(r"^model\.language_model\.(.+)$", lambda m: f"language_model.model.{m[1]}"),
    _rule(r"^lm_head\.(.+)$", lambda m: f"language_model.lm_head.{m[1]}"),
]

_TO_TRANSFORMERS: list[KeyRule] = [
    _rule(r"^vision_tower\.encoder\.(.+)$", lambda m: f"model.vision_tower.{m[1]}"),
    _rule(
        r"^multi_modal_projector\.layers\.([01])\.(weight|bias)$",
        lambda m: f"model.multi_modal_projector.linear_{int(m[1]) + 1}.{m[2]}",
    ),
    _rule(r"^language_model\.model\.(.+)$", lambda m: f"model.language_model.{m[1]}"),
    _rule(r"^language_model\.lm_head\.(.+)$", lambda m: f"lm_head.{m[1]}"),
]

# Original LLaVA: the LLM's own keys at the top, projector and CLIP tower inside `model.`.
# `model.mm_projector.{2k}` is linear layer k (odd indices are the GELUs).
_FROM_ORIGINAL: list[KeyRule] = [
    _rule(r"^model\.mm_projector\.(weight|bias)$", lambda m: f"multi_modal_projector.layers.0.{m[1]}"),
    _rule(
        r"^model\.mm_projector\.(\d*[02468])\.(weight|bias)$",
        lambda m: f"multi_modal_projector.layers.{int(m[1]) // 2}.{m[2]}",
    ),
    _rule(r"^model\.vision_tower\.vision_tower\.(?:vision_model\.)?(.+)$", lambda m: f"vision_tower.encoder.{m[1]}"),
    _rule(r"^model\.(.+)$", lambda m: f"language_model.model.{m[1]}"),
    _rule(r"^lm_head\.(.+)$", lambda m: f"language_model.lm_head.{m[1]}"),
]

# Buffers that older transformers versions saved and current ones recompute from the config.
_STALE_BUFFER = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")


def _rename(state_dict: StateDict, rules: list[KeyRule], source: str) -> StateDict:
    """Rename every key by the first matching rule; a key no rule knows is an error, never dropped."""
    renamed: StateDict = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        for pattern, replace in rules:
            match = pattern.match(key)
            if match:
                renamed[replace(match)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:20]) + (" ..." if len(unknown) > 20 else "")
        raise ValueError(f"{len(unknown)} {source} state-dict key(s) have no llavakit mapping: {shown}")
    return renamed


def llavakit_state_dict_from_transformers(state_dict: StateDict) -> StateDict:
    """Rename a `LlavaForConditionalGeneration` state dict to `LlavaKitForCausalLM` keys (tensors shared)."""
    return _rename(state_dict, _FROM_TRANSFORMERS, "transformers Llava")


def transformers_state_dict_from_llavakit(state_dict: StateDict) -> StateDict:
    """Rename a `LlavaKitForCausalLM` state dict (mlp2x_gelu connector) to `LlavaForConditionalGeneration` keys."""
    return _rename(state_dict, _TO_TRANSFORMERS, "llavakit")


def llavakit_state_dict_from_original(state_dict: StateDict) -> StateDict:
    """Rename an original-LLaVA state dict (LLM + `mm_projector` + optional vision tower) to llavakit keys."""
    kept = {key: tensor for key, tensor in state_dict.items() if not _STALE_BUFFER.search(key)}
    return _rename(kept, _FROM_ORIGINAL, "original LLaVA")


# ---------------------------------------------------------------- building models from state dicts


def _load_strict(model_class, config: PreTrainedConfig, state_dict: StateDict, dtype: torch.dtype | None):
    """Build `model_class` on the meta device and take the given tensors as its weights.

    transformers' own loader does this (tensors assigned, not copied; non-persistent buffers
    recomputed; tied embeddings tied); a key that is missing or left over is an error here,
    because a silently random-initialised weight is a wrong model that still runs.
    """
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=state_dict, dtype=dtype, output_loading_info=True
    )
    problems = {
        name: sorted(info.get(name) or ())
        for name in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
        if info.get(name)
    }
    if problems:
        raise ValueError(f"weights do not fit {model_class.__name__}: {problems}")
    return model.eval()


def _check_text_layout(language_model: torch.nn.Module) -> None:
    if getattr(language_model, "base_model_prefix", None) != "model":
        raise ValueError(
            f"{type(language_model).__name__} keeps its decoder under {language_model.base_model_prefix!r}; "
            "conversion supports language models whose decoder is `.model` (Llama, Mistral, Qwen2, ...)"
        )


def import_transformers_llava(
    source: str | Path | LlavaForConditionalGeneration, dtype: torch.dtype | None = None
) -> LlavaKitForCausalLM:
    """A `LlavaKitForCausalLM` from a transformers Llava model or a folder holding one.

    A model passed in shares its weight tensors with the result (no copy) unless `dtype` differs.
    """
    if isinstance(source, (str, Path)):
        source = LlavaForConditionalGeneration.from_pretrained(source, dtype=dtype)
    config = llavakit_config_from_transformers(source.config)
    state_dict = llavakit_state_dict_from_transformers(source.state_dict())
    return _load_strict(LlavaKitForCausalLM, config, state_dict, dtype or source.dtype)


def export_to_transformers(model: LlavaKitForCausalLM) -> LlavaForConditionalGeneration:
    """The same model as transformers' `LlavaForConditionalGeneration` (eval mode, same dtype, shared tensors).

    `save_pretrained` on the result writes a checkpoint that transformers, vLLM and SGLang read.
    """
    _check_text_layout(model.language_model)
    config = transformers_config_from_llavakit(model.config)
    state_dict = transformers_state_dict_from_llavakit(model.state_dict())
    return _load_strict(LlavaForConditionalGeneration, config, state_dict, model.dtype)


# ---------------------------------------------------------------- original LLaVA (haotian-liu/LLaVA layout)

_LLM_BY_ARCHITECTURE = {
    "LlavaLlamaForCausalLM": "llama",
    "LlavaMistralForCausalLM": "mistral",
    "LlavaQwenForCausalLM": "qwen2",
}
_LLM_BY_MODEL_TYPE = {"llava_llama": "llama", "llava_mistral": "mistral", "llava_qwen": "qwen2"}
_STRATEGY_BY_SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
# Config fields the LLaVA code adds on top of the language model's own; they do not go to the LLM config.
_LLAVA_ONLY_FIELDS = {
    "model_type",
    "architectures",
    "_name_or_path",
    "transformers_version",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
}


@dataclass(frozen=True)
class OriginalLlavaConfig:
    """What an original LLaVA `config.json` says, in llavakit terms.

    image_aspect_ratio: the original preprocessing (`pad` for LLaVA-1.5: pad to square with the
    image mean; `square`: plain resize) so the caller can choose the matching image mode.
    mm_use_im_start_end: whether the original prompts wrap the image in <im_start>/<im_end> tokens.
    """

    text_config: PreTrainedConfig
    vision_tower: str
    connector: str
    vision_feature_layer: int
    select_feature: str
    mm_hidden_size: int | None
    image_aspect_ratio: str
    mm_use_im_start_end: bool


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def is_original_llava_checkpoint(folder: str | Path) -> bool:
    """True when `folder/config.json` is an original LLaVA config (it names an `mm_vision_tower`)."""
    path = Path(folder) / "config.json"
    return path.is_file() and "mm_vision_tower" in _read_json(path)


def _llm_type(raw: dict, path: Path) -> str:
    for architecture in raw.get("architectures") or ():
        if architecture in _LLM_BY_ARCHITECTURE:
            return _LLM_BY_ARCHITECTURE[architecture]
    if raw.get("model_type") in _LLM_BY_MODEL_TYPE:
        return _LLM_BY_MODEL_TYPE[raw["model_type"]]
    known = sorted(_LLM_BY_ARCHITECTURE) + sorted(_LLM_BY_MODEL_TYPE)
    raise ValueError(
        f"{path}: cannot tell the language model of architectures={raw.get('architectures')} "
        f"model_type={raw.get('model_type')!r}; known: {', '.join(known)}"
    )


def read_original_llava_config(folder: str | Path) -> OriginalLlavaConfig:
    """Parse an original LLaVA `config.json` (LLM fields + `mm_*` fields) without loading weights."""
    path = Path(folder) / "config.json"
    raw = _read_json(path)
    if "mm_vision_tower" not in raw:
        raise ValueError(f"{path} is not an original LLaVA config: it has no 'mm_vision_tower'")
    llm_fields = {key: value for key, value in raw.items() if key not in _LLAVA_ONLY_FIELDS and "mm_" not in key}
    connector = raw.get("mm_projector_type", "linear")  # the original code's default
    if mlp_depth(connector) is None:
        raise ValueError(f"{path}: mm_projector_type {connector!r} is not supported; use linear or mlpNx_gelu")
    select_feature = raw.get("mm_vision_select_feature", "patch")
    if select_feature not in _STRATEGY_BY_SELECT_FEATURE:
        raise ValueError(
            f"{path}: mm_vision_select_feature {select_feature!r} is not one of {sorted(_STRATEGY_BY_SELECT_FEATURE)}"
        )
    return OriginalLlavaConfig(
        text_config=AutoConfig.for_model(_llm_type(raw, path), **llm_fields),
        vision_tower=raw["mm_vision_tower"],
        connector=connector,
        vision_feature_layer=int(raw.get("mm_vision_select_layer", -1)),
        select_feature=select_feature,
        mm_hidden_size=raw.get("mm_hidden_size"),
        image_aspect_ratio=raw.get("image_aspect_ratio") or "square",
        mm_use_im_start_end=bool(raw.get("mm_use_im_start_end", False)),
    )


def _checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a transformers-style folder: an index's shards, or the single file."""
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(_read_json(index)["weight_map"].values()))
            return [folder / shard for shard in shards]
        if (folder / single_name).is_file():
            return [folder / single_name]
    hint = ""
    if (folder / "mm_projector.bin").is_file():
        hint = " (a projector-only stage-1 folder needs its base LLM merged first)"
    raise ValueError(f"{folder}: no model.safetensors or pytorch_model.bin weights found{hint}")


def _load_weights(folder: Path) -> StateDict:
    state_dict: StateDict = {}
    for file in _checkpoint_files(folder):
        if file.suffix == ".safetensors":
            state_dict.update(load_file(file))
        else:
            state_dict.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    return state_dict


def _load_vision_encoder_weights(path: str, vision_config: PreTrainedConfig, dtype: torch.dtype) -> StateDict:
    """The vision encoder's weights from its own checkpoint (a vision model or a full CLIP/SigLIP one)."""
    encoder, info = AutoModel.from_pretrained(path, config=vision_config, dtype=dtype, output_loading_info=True)
    if info.get("missing_keys"):
        raise ValueError(f"vision tower {path}: weights missing for {sorted(info['missing_keys'])}")
    return {f"vision_tower.encoder.{key}": tensor for key, tensor in encoder.state_dict().items()}


def _vision_config(path: str) -> PreTrainedConfig:
    config = AutoConfig.from_pretrained(path)
    # A full CLIP/SigLIP checkpoint holds the vision config as a sub-config.
    return copy.deepcopy(getattr(config, "vision_config", None) or config)


def _grow_vocab(state_dict: StateDict, vocab_size: int) -> None:
    """Append rows (the mean of the existing ones) to the embedding and untied LM head, in place.

    The rows only give the new `<image>` id a slot: its embedding is always replaced by image
    features, and the mean keeps its output logit ordinary.
    """
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        if key not in state_dict:
            continue
        weight = state_dict[key]
        extra = vocab_size - weight.shape[0]
        mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
        state_dict[key] = torch.cat([weight, mean.expand(extra, -1)], dim=0)


def import_original_llava(
    folder: str | Path,
    image_token_id: int,
    vision_tower_path: str | None = None,
    dtype: torch.dtype | None = None,
) -> LlavaKitForCausalLM:
    """A `LlavaKitForCausalLM` from an original LLaVA checkpoint folder.

    image_token_id: the id the caller's tokenizer gives `<image>` (original LLaVA splices at
    -200 instead); embeddings grow to hold it when it is past the vocabulary.
    vision_tower_path: where the CLIP/SigLIP tower lives when `mm_vision_tower` names a hub
    model that is available locally elsewhere; its weights are used unless the checkpoint
    carries its own `model.vision_tower.*` weights. dtype: default, the checkpoint's LLM dtype.
    Read `read_original_llava_config(folder).image_aspect_ratio` to choose the image mode.
    """
    folder = Path(folder)
    original = read_original_llava_config(folder)
    if image_token_id < 0:
        raise ValueError(f"image_token_id must be a token id >= 0, got {image_token_id}")
    state_dict = llavakit_state_dict_from_original(_load_weights(folder))
    embed_key = "language_model.model.embed_tokens.weight"
    if embed_key not in state_dict:
        raise ValueError(f"{folder}: the checkpoint has no model.embed_tokens.weight")
    dtype = dtype or state_dict[embed_key].dtype

    vision_path = vision_tower_path or original.vision_tower
    vision_config = _vision_config(vision_path)
    if not any(key.startswith("vision_tower.") for key in state_dict):
        state_dict.update(_load_vision_encoder_weights(vision_path, vision_config, dtype))
    if original.mm_hidden_size is not None and original.mm_hidden_size != vision_config.hidden_size:
        raise ValueError(
            f"{folder}: mm_hidden_size={original.mm_hidden_size} but the vision tower {vision_path} "
            f"has hidden_size={vision_config.hidden_size}"
        )

    text_config = copy.deepcopy(original.text_config)
    vocab_size = state_dict[embed_key].shape[0]
    if image_token_id >= vocab_size:
        vocab_size = image_token_id + 1
        _grow_vocab(state_dict, vocab_size)
    text_config.vocab_size = vocab_size
    # Original LLaVA's SigLIP towers keep every feature: without a CLS token there is nothing to drop.
    has_cls = vision_config.model_type in VISION_TYPES_WITH_CLS
    strategy = _STRATEGY_BY_SELECT_FEATURE[original.select_feature] if has_cls else "full"
    config = LlavaKitConfig(
        vision_config=vision_config,
        text_config=text_config,
        connector=original.connector,
        vision_feature_layer=original.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_token_id=image_token_id,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    return _load_strict(LlavaKitForCausalLM, config, state_dict, dtype)
