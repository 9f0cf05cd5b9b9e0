"""Checkpoint conversion: original LLaVA folders (the haotian-liu/LLaVA layout) -> llavakit.

Why: published LLaVA weights in the original layout (LLaVA, LLaVA-1.5, and their
Mistral / Qwen variants) must load here. The folder is a language model checkpoint whose
`config.json` adds `mm_*` fields and whose weights add `model.mm_projector.*` and, when it
was tuned, `model.vision_tower.*`. Only names differ; tensors are reused (no copy). The
layout is read, never written: llavakit exports to transformers' layouts instead.

    model = import_original_llava("path/to/llava-v1.5-7b", image_token_id=len(tokenizer) - 1)
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, PreTrainedConfig

from llavakit.interop.keys import KeyRule, StateDict, regex_rule, rename
from llavakit.interop.loading import load_strict
from llavakit.model.configuration import VISION_TYPES_WITH_CLS, LlavaKitConfig
from llavakit.model.connectors import mlp_depth
from llavakit.model.modeling import LlavaKitForCausalLM

# ---------------------------------------------------------------- config

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
    """

    text_config: PreTrainedConfig
    vision_tower: str
    connector: str
    vision_feature_layer: int
    select_feature: str
    mm_hidden_size: int | None
    image_aspect_ratio: str


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
    """Parse an original LLaVA `config.json` (LLM fields + `mm_*` fields) without loading weights.

    Raises ValueError for settings llavakit cannot reproduce exactly (a projector type it lacks,
    an unknown feature selection, image features wrapped in <im_start>/<im_end>), never ignoring them.
    """
    path = Path(folder) / "config.json"
    raw = _read_json(path)
    if "mm_vision_tower" not in raw:
        raise ValueError(f"{path} is not an original LLaVA config: it has no 'mm_vision_tower'")
    if raw.get("mm_use_im_start_end"):
        raise ValueError(
            f"{path}: mm_use_im_start_end is true: this checkpoint was trained with every image's features "
            "wrapped in <im_start> and <im_end> tokens, which llavakit does not support (its processor and "
            "model put the image features alone); imported, the model would see its images without them"
        )
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
    )


# ---------------------------------------------------------------- state-dict keys

# The LLM's own keys at the top, projector and CLIP tower inside `model.`.
# `model.mm_projector.{2k}` is linear layer k (odd indices are the GELUs).
_FROM_ORIGINAL: list[KeyRule] = [
    regex_rule(r"^model\.mm_projector\.(weight|bias)$", lambda m: f"multi_modal_projector.layers.0.{m[1]}"),
    regex_rule(
        r"^model\.mm_projector\.(\d*[02468])\.(weight|bias)$",
        lambda m: f"multi_modal_projector.layers.{int(m[1]) // 2}.{m[2]}",
    ),
    regex_rule(
        r"^model\.vision_tower\.vision_tower\.(?:vision_model\.)?(.+)$", lambda m: f"vision_tower.encoder.{m[1]}"
    ),
    regex_rule(r"^model\.(.+)$", lambda m: f"language_model.model.{m[1]}"),
    regex_rule(r"^lm_head\.(.+)$", lambda m: f"language_model.lm_head.{m[1]}"),
]

# Buffers that older transformers versions saved and current ones recompute from the config.
_STALE_BUFFER = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")


def llavakit_state_dict_from_original(state_dict: StateDict) -> StateDict:
    """Rename an original-LLaVA state dict (LLM + `mm_projector` + optional vision tower) to llavakit keys."""
    kept = {key: tensor for key, tensor in state_dict.items() if not _STALE_BUFFER.search(key)}
    return rename(kept, _FROM_ORIGINAL, "original LLaVA")


# ---------------------------------------------------------------- weights and model


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
    return load_strict(LlavaKitForCausalLM, config, state_dict, dtype)
