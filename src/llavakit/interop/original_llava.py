"""Checkpoint conversion: original LLaVA folders (haotian-liu/LLaVA, LLaVA-VL/LLaVA-NeXT layouts) -> llavakit.

Why: published LLaVA weights in the original layout (LLaVA, LLaVA-1.5, LLaVA-NeXT / 1.6,
LLaVA-OneVision, and their Mistral / Qwen variants) must load here. The folder is a language
model checkpoint whose `config.json` adds `mm_*` fields and whose weights add
`model.mm_projector.*`, for the grid layouts `model.image_newline`, and, when it was tuned,
`model.vision_tower.vision_tower.*`. Only names differ; tensors are reused (no copy). The
image layout fields are translated by `original_next`. The layout is read, never written:
llavakit exports to transformers' layouts instead.

The vision tower is the one `mm_vision_tower` names (or `vision_tower_path`). A SigLIP tower
is used as the LLaVA-NeXT code builds it: its last layer and pooling head dropped, features
from the new last layer (as transformers' OneVision conversion does too).

    model = import_original_llava("path/to/llava-v1.5-7b", image_token_id=len(tokenizer) - 1)
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, PreTrainedConfig

from llavakit.errors import CheckpointError
from llavakit.interop.keys import KeyRule, StateDict, regex_rule, rename
from llavakit.interop.loading import load_strict
from llavakit.interop.original_next import OriginalLayout, read_original_layout
from llavakit.model.checkpoint import read_json_file
from llavakit.model.configuration import VISION_TYPES_WITH_CLS, LlavaKitConfig
from llavakit.model.connectors import mlp_depth
from llavakit.model.modeling import LlavaKitForCausalLM

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- config

_LLM_BY_ARCHITECTURE = {
    "LlavaLlamaForCausalLM": "llama",
    "LlavaMistralForCausalLM": "mistral",
    "LlavaMixtralForCausalLM": "mixtral",
    "LlavaQwenForCausalLM": "qwen2",
    "LlavaGemmaForCausalLM": "gemma",
}
_LLM_BY_MODEL_TYPE = {
    "llava_llama": "llama",
    "llava_mistral": "mistral",
    "llava_mixtral": "mixtral",
    "llava_qwen": "qwen2",
    "llava_gemma": "gemma",
}
_STRATEGY_BY_SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
# The LLaVA-NeXT SigLIP tower drops the last layer, so its features are the full tower's penultimate layer.
_SIGLIP_SELECT_LAYER = -2
_SIGLIP = "siglip_vision_model"
# Config fields the LLaVA code adds on top of the language model's own (besides every `mm_*`
# field); they do not go to the LLM config.
_LLAVA_ONLY_FIELDS = {
    "model_type",
    "architectures",
    "_name_or_path",
    "transformers_version",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "image_crop_resolution",
    "image_split_resolution",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "add_faster_video",
    "faster_token_stride",
    "add_time_instruction",
    "force_sample",
    "vision_tower_pretrained",
    "use_pos_skipping",
    "pos_skipping_range",
    "delay_load",
    "s2",
    "s2_scales",
}


@dataclass(frozen=True)
class OriginalLlavaConfig:
    """What an original LLaVA `config.json` says, in llavakit terms.

    image_aspect_ratio: the original preprocessing (`pad` for LLaVA-1.5: pad to square with the
    image mean; `square`: plain resize; `anyres`, `anyres_max_N`: grids of crops). layout: the
    image / video layout (`original_next.OriginalLayout`); `layout.processor_mode` is the image
    mode a processor needs. name: the `_name_or_path` the trainer recorded (may be empty).
    """

    text_config: PreTrainedConfig
    vision_tower: str
    connector: str
    vision_feature_layer: int
    select_feature: str
    mm_hidden_size: int | None
    image_aspect_ratio: str
    layout: OriginalLayout
    name: str = ""


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not a model config")
    return data


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
    raise CheckpointError(
        f"{path}: cannot tell the language model of architectures={raw.get('architectures')} "
        f"model_type={raw.get('model_type')!r}; known: {', '.join(known)}"
    )


def _check_image_features(raw: dict, path: Path) -> None:
    """Image features wrapped in <im_start>/<im_end> would be imported silently wrong: refused."""
    if raw.get("mm_use_im_start_end"):
        raise CheckpointError(
            f"{path}: mm_use_im_start_end is true: this checkpoint was trained with every image's features "
            "wrapped in <im_start> and <im_end> tokens, which llavakit does not support (its processor and "
            "model put the image features alone); imported, the model would see its images without them"
        )


def read_original_llava_config(folder: str | Path) -> OriginalLlavaConfig:
    """Parse an original LLaVA `config.json` (LLM fields + `mm_*` fields) without loading weights.

    Raises CheckpointError (a ValueError) naming the field for settings llavakit cannot reproduce
    exactly (a projector type it lacks, an unknown feature selection, image features wrapped in
    <im_start>/<im_end>, an image layout `original_next` refuses), never ignoring them.
    """
    path = Path(folder) / "config.json"
    raw = _read_json(path)
    if "mm_vision_tower" not in raw:
        raise CheckpointError(f"{path} is not an original LLaVA config: it has no 'mm_vision_tower'")
    _check_image_features(raw, path)
    llm_fields = {key: value for key, value in raw.items() if key not in _LLAVA_ONLY_FIELDS and "mm_" not in key}
    connector = raw.get("mm_projector_type", "linear")  # the original code's default
    if mlp_depth(connector) is None:
        raise CheckpointError(f"{path}: mm_projector_type {connector!r} is not supported; use linear or mlpNx_gelu")
    select_feature = raw.get("mm_vision_select_feature", "patch")
    if select_feature not in _STRATEGY_BY_SELECT_FEATURE:
        raise CheckpointError(
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
        layout=read_original_layout(raw, path),
        name=str(raw.get("_name_or_path") or ""),
    )


# ---------------------------------------------------------------- state-dict keys

# The LLM's own keys at the top; projector, newline and vision tower inside `model.`.
# `model.mm_projector.{2k}` is linear layer k (odd indices are the GELUs).
_FROM_ORIGINAL: list[KeyRule] = [
    regex_rule(r"^model\.mm_projector\.(weight|bias)$", lambda m: f"multi_modal_projector.layers.0.{m[1]}"),
    regex_rule(
        r"^model\.mm_projector\.(\d*[02468])\.(weight|bias)$",
        lambda m: f"multi_modal_projector.layers.{int(m[1]) // 2}.{m[2]}",
    ),
    regex_rule(r"^model\.image_newline$", lambda m: "image_newline"),
    regex_rule(
        r"^model\.vision_tower\.vision_tower\.(?:vision_model\.)?(.+)$", lambda m: f"vision_tower.encoder.{m[1]}"
    ),
    regex_rule(r"^model\.(.+)$", lambda m: f"language_model.model.{m[1]}"),
    regex_rule(r"^lm_head\.(.+)$", lambda m: f"language_model.lm_head.{m[1]}"),
]

# Buffers that older transformers versions saved and current ones recompute from the config.
_STALE_BUFFER = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")


def llavakit_state_dict_from_original(state_dict: StateDict) -> StateDict:
    """Rename an original-LLaVA state dict (LLM + `mm_projector` + newline + optional tower) to llavakit keys."""
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
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin weights found{hint}")


def load_original_weights(folder: str | Path) -> StateDict:
    """Every tensor of a transformers-style folder's weight files, as saved (stale buffers dropped)."""
    state_dict: StateDict = {}
    for file in _checkpoint_files(Path(folder)):
        if file.suffix == ".safetensors":
            state_dict.update(load_file(file))
        else:
            state_dict.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    return {key: tensor for key, tensor in state_dict.items() if not _STALE_BUFFER.search(key)}


def _load_vision_encoder_weights(path: str, vision_config: PreTrainedConfig, dtype: torch.dtype) -> StateDict:
    """The vision encoder's weights from its own checkpoint (a vision model or a full CLIP/SigLIP one).

    Weights the (possibly truncated) config has no place for, such as SigLIP's dropped last
    layer and head, are left out; a missing one is an error.
    """
    encoder, info = AutoModel.from_pretrained(path, config=vision_config, dtype=dtype, output_loading_info=True)
    if info.get("missing_keys"):
        raise CheckpointError(f"vision tower {path}: weights missing for {sorted(info['missing_keys'])}")
    return {f"vision_tower.encoder.{key}": tensor for key, tensor in encoder.state_dict().items()}


def _truncate_siglip(config: PreTrainedConfig, path: str) -> None:
    """The LLaVA-NeXT SigLIP tower, in place: the last encoder layer and the pooling head removed."""
    if config.num_hidden_layers < 2:
        raise CheckpointError(
            f"vision tower {path}: a SigLIP tower with {config.num_hidden_layers} layer(s) cannot lose its last "
            "layer, as the LLaVA-NeXT code that trained this checkpoint does"
        )
    config.num_hidden_layers -= 1
    config.vision_use_head = False


def _vision_config(path: str) -> PreTrainedConfig:
    """The vision tower's config as the original code runs it (SigLIP truncated)."""
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as error:
        raise CheckpointError(
            f"cannot read the vision tower {path!r} (mm_vision_tower, or --vision-tower): {error}; "
            "download it (hf download NAME --local-dir DIR) and pass --vision-tower DIR"
        ) from error
    # A full CLIP/SigLIP checkpoint holds the vision config as a sub-config.
    vision = copy.deepcopy(getattr(config, "vision_config", None) or config)
    if vision.model_type == _SIGLIP:
        _truncate_siglip(vision, path)
    return vision


def _grow_vocab(state_dict: StateDict, vocab_size: int) -> None:
    """Append rows (the mean of the existing ones) to the embedding and untied LM head, in place.

    The rows only give the new `<image>` (and `<video>`) ids a slot: their embeddings are
    always replaced by visual features, and the mean keeps their output logits ordinary.
    """
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        if key not in state_dict:
            continue
        weight = state_dict[key]
        extra = vocab_size - weight.shape[0]
        mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
        state_dict[key] = torch.cat([weight, mean.expand(extra, -1)], dim=0)


def _feature_selection(original: OriginalLlavaConfig, vision_config: PreTrainedConfig, where: Path) -> dict:
    """vision_feature_layer and strategy as the original tower computes its features."""
    has_cls = vision_config.model_type in VISION_TYPES_WITH_CLS
    if vision_config.model_type == _SIGLIP:
        if original.vision_feature_layer != _SIGLIP_SELECT_LAYER:
            logger.warning(
                "%s: mm_vision_select_layer=%d is ignored, as the LLaVA-NeXT SigLIP tower ignores it: "
                "features come from the penultimate layer",
                where,
                original.vision_feature_layer,
            )
        # The truncated tower's last layer; SigLIP has no CLS, so every feature is kept.
        return dict(vision_feature_layer=-1, vision_feature_select_strategy="full")
    strategy = _STRATEGY_BY_SELECT_FEATURE[original.select_feature] if has_cls else "full"
    needs_square_map = original.layout.is_grid or original.layout.video is not None
    if needs_square_map and has_cls and strategy == "full":
        raise CheckpointError(
            f"{where}: mm_vision_select_feature 'cls_patch' keeps the CLS feature, so the features of a crop are "
            f"no square map for the {original.image_aspect_ratio!r} / video layout; use 'patch'"
        )
    return dict(vision_feature_layer=original.vision_feature_layer, vision_feature_select_strategy=strategy)


def _vision_weights(
    state_dict: StateDict, vision_path: str, vision_config: PreTrainedConfig, dtype: torch.dtype
) -> None:
    """Add the named tower's weights, in place, unless the checkpoint carries its own (a tuned tower)."""
    if not any(key.startswith("vision_tower.") for key in state_dict):
        state_dict.update(_load_vision_encoder_weights(vision_path, vision_config, dtype))


def import_original_llava(
    folder: str | Path,
    image_token_id: int,
    vision_tower_path: str | None = None,
    dtype: torch.dtype | None = None,
    video_token_id: int | None = None,
    state_dict: StateDict | None = None,
) -> LlavaKitForCausalLM:
    """A `LlavaKitForCausalLM` from an original LLaVA / LLaVA-NeXT / OneVision checkpoint folder.

    image_token_id (video_token_id): the id the caller's tokenizer gives `<image>` (`<video>`;
    the original splices both at -200 instead); embeddings grow to hold them when they are past
    the vocabulary. video_token_id is used only when the config has video settings.
    vision_tower_path: where the CLIP/SigLIP tower lives when `mm_vision_tower` names a hub
    model that is available locally elsewhere; its weights are used unless the checkpoint
    carries its own `model.vision_tower.*` weights. dtype: default, the checkpoint's LLM dtype.
    state_dict: the original-layout weights when they are not the folder's own files (a merged
    LoRA output, `original_lora`). Read `read_original_llava_config(folder).layout.processor_mode`
    to choose the processor's image mode.
    """
    folder = Path(folder)
    original = read_original_llava_config(folder)
    if image_token_id < 0 or (video_token_id is not None and video_token_id < 0):
        raise ValueError(f"image and video token ids must be >= 0, got {image_token_id}, {video_token_id}")
    weights = load_original_weights(folder) if state_dict is None else state_dict
    state_dict = llavakit_state_dict_from_original(weights)
    embed_key = "language_model.model.embed_tokens.weight"
    if embed_key not in state_dict:
        raise CheckpointError(f"{folder}: the checkpoint has no model.embed_tokens.weight")
    dtype = dtype or state_dict[embed_key].dtype

    vision_path = vision_tower_path or original.vision_tower
    vision_config = _vision_config(vision_path)
    _vision_weights(state_dict, vision_path, vision_config, dtype)
    if original.mm_hidden_size is not None and original.mm_hidden_size != vision_config.hidden_size:
        raise CheckpointError(
            f"{folder}: mm_hidden_size={original.mm_hidden_size} but the vision tower {vision_path} "
            f"has hidden_size={vision_config.hidden_size}"
        )

    if original.layout.video is None:
        video_token_id = None
    text_config = copy.deepcopy(original.text_config)
    needed = max(token for token in (image_token_id, video_token_id) if token is not None) + 1
    vocab_size = state_dict[embed_key].shape[0]
    if needed > vocab_size:
        vocab_size = needed
        _grow_vocab(state_dict, vocab_size)
    text_config.vocab_size = vocab_size
    config = LlavaKitConfig(
        vision_config=vision_config,
        text_config=text_config,
        connector=original.connector,
        image_token_id=image_token_id,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        **_feature_selection(original, vision_config, folder),
        **original.layout.config_fields(int(vision_config.image_size), video_token_id),
    )
    return load_strict(LlavaKitForCausalLM, config, state_dict, dtype)
