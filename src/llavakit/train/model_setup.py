"""The model and processor a training run starts from, and the weights a stage hands to the next.

`build_model_and_processor(config)` reads the `model` and `data` sections:

* `model.checkpoint`: a saved llavakit folder (weights + processor), e.g. a finished stage 2;
* otherwise `model.vision` + `model.language` (hub names, local folders, or config dicts with
  a `model_type` for random tiny models) composed with a fresh connector, and a tokenizer
  (`model.tokenizer`: a name or folder, `tiny`, or null for the language model's own) that
  gets the `<image>` token (and `model.video_token`) and a pad token if it lacks them; their
  ids fill `model.image_token_id` / `model.video_token_id` (a spec that gives them must agree);
* then `model.connector_weights` (a stage-1 run folder, its `trainable.safetensors`, or an
  original LLaVA `mm_projector.bin`) is loaded over the fresh connector, as LLaVA's
  `--pretrain_mm_mlp_adapter` does.

A stage that leaves the language model frozen saves only what trained
(`trainable.safetensors`: parameter name -> tensor, plus `config.json` and the processor):
megabytes instead of the whole LLM. LoRA / QLoRA wrap the model with peft, adapters on the
language model's linear layers (and an MoE language model's fused expert weights), the connector
(and vision tower, when it trains; an MoE's routers) saved whole.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from llavakit.errors import CheckpointError, ConfigError
from llavakit.interop.original_llava import llavakit_state_dict_from_original
from llavakit.model.build import (
    ModelSpec,
    build_model,
    compose_model,
    load_vision_encoder,
    vision_part,
)
from llavakit.model.checkpoint import check_safetensors_file
from llavakit.model.configuration import LlavaKitConfig
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.model.moe import apply_moe
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.processing.tokenizer import prepare_tokenizer
from llavakit.processing.video import FrameSampling
from llavakit.train.checkpoint_files import verify_model_folder
from llavakit.train.config import DataConfig, StageConfig, TrainConfig, VideoDataConfig
from llavakit.train.config_checks import data_mode_problems

logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS_NAME = "trainable.safetensors"


# ---- tokenizer ---------------------------------------------------------------------------------


def load_tokenizer(model: ModelSpec) -> PreTrainedTokenizerBase:
    """`model.tokenizer` (a name or folder, or `tiny`), else the language model's own tokenizer."""
    if model.tokenizer == "tiny":
        from llavakit.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()
    source = model.tokenizer if model.tokenizer is not None else model.language
    if not isinstance(source, str):
        raise ValueError(
            "model.tokenizer is required when model.language is a config dict: name a tokenizer folder, "
            "a hub tokenizer, or `tiny`"
        )
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {source!r} has no fast version; training labels need character offsets")
    return tokenizer


def with_token_ids(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> ModelSpec:
    """`spec` with the tokenizer's ids of its image (and video) token, added to the tokenizer when missing."""
    image_token_id = prepare_tokenizer(tokenizer, spec.image_token)
    video_token_id = prepare_tokenizer(tokenizer, spec.video_token) if spec.video_token is not None else None
    _check_same_id("image_token_id", spec.image_token_id, image_token_id, spec.image_token)
    _check_same_id("video_token_id", spec.video_token_id, video_token_id, spec.video_token)
    return dataclasses.replace(spec, image_token_id=image_token_id, video_token_id=video_token_id)


def _check_same_id(field: str, given: int | None, actual: int | None, token: str | None) -> None:
    if given is not None and given != actual:
        raise ValueError(
            f"model.{field} is {given} but the tokenizer gives {token!r} the id {actual}; "
            f"set model.{field}=null to take the tokenizer's"
        )


# ---- model -------------------------------------------------------------------------------------


def _torch_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"model.dtype must be a torch dtype name such as bfloat16 or float32, got {name!r}")
    return dtype


def _require_qlora_support(quantize: str) -> None:
    """QLoRA loads the language model through bitsandbytes, which needs a CUDA GPU."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(
            f"stage.lora.quantize={quantize} (QLoRA) needs bitsandbytes: pip install 'llavakit[qlora]' "
            "(and a CUDA GPU); or set stage.lora.quantize=null for plain LoRA"
        ) from None
    if not torch.cuda.is_available():
        raise ValueError(
            f"stage.lora.quantize={quantize} (QLoRA) needs a CUDA GPU: bitsandbytes quantized layers do not "
            "train on this machine; set stage.lora.quantize=null for plain LoRA"
        )


def _quantized_language_model(source: str, quantize: str, dtype: torch.dtype | None) -> nn.Module:
    from transformers import BitsAndBytesConfig

    compute = dtype or torch.bfloat16
    if quantize == "4bit":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(source, quantization_config=quantization, dtype=compute)


def _compose(spec: ModelSpec, quantize: str | None) -> LlavaKitForCausalLM:
    """A fresh model of `spec` (with token ids); with `quantize`, the language model loaded through bitsandbytes."""
    dtype = _torch_dtype(spec.dtype)
    if not quantize:
        return build_model(spec)
    if not isinstance(spec.language, str):
        raise ValueError("stage.lora.quantize (QLoRA) needs model.language to name pretrained weights")
    if spec.moe.upcycle:
        raise ValueError(
            "model.moe.upcycle=true copies full-precision weights into the experts, which a quantized load does "
            "not have: upcycle without stage.lora.quantize, or save the upcycled model and quantize that"
        )
    _require_qlora_support(quantize)
    vision = load_vision_encoder(vision_part(spec), dtype)
    language = apply_moe(_quantized_language_model(spec.language, quantize, dtype), spec.moe)
    return compose_model(spec, vision, language)


def _fit_embeddings(model: LlavaKitForCausalLM, vocabulary: int) -> None:
    """Grow the language model's embeddings to cover the tokenizer (added `<image>` / pad tokens)."""
    rows = model.get_input_embeddings().num_embeddings
    if vocabulary > rows:
        model.language_model.resize_token_embeddings(vocabulary)
        model.config.text_config = model.language_model.config
        logger.info("resized the language model's embeddings from %d to %d rows", rows, vocabulary)


def frame_sampling(video: VideoDataConfig) -> FrameSampling:
    """The recipe's frame sampling (`data.video`), OneVision's where a field is null."""
    chosen = {"max_frames": video.frames_upbound, "fps": video.fps, "folder_fps": video.folder_fps}
    return FrameSampling(**{key: value for key, value in chosen.items() if value is not None})


def check_data_fits_model(data: DataConfig, model_config: LlavaKitConfig) -> None:
    """Data keys that the model's image mode or lack of video never reads, named with the model's setting.

    Checked again here because a `model.checkpoint` brings its own mode, known only once loaded.
    """
    problems = data_mode_problems(data, model_config.image_mode, model_config.video_token_id is not None)
    if problems:
        raise ConfigError("; ".join(problems))


def _processor_for(model: LlavaKitForCausalLM, tokenizer, config: TrainConfig) -> LlavaKitProcessor:
    check_data_fits_model(config.data, model.config)
    return LlavaKitProcessor.from_model_config(
        tokenizer,
        model.config,
        config.data.template,
        config.data.image_aspect or "pad",
        video_sampling=frame_sampling(config.data.video),
    )


def _keeps_saved_processor(saved: LlavaKitProcessor, data: DataConfig) -> bool:
    """Whether a checkpoint's processor already is what the recipe asks for (so its own image settings stay)."""
    same_video = saved.video is None or saved.video.sampling == frame_sampling(data.video)
    same_aspect = data.image_aspect is None or saved.image_config.mode == data.image_aspect
    return saved.template_name == data.template and same_aspect and same_video


def build_model_and_processor(config: TrainConfig) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor]:
    """The model a run starts from and the processor that feeds it (see the module docstring)."""
    spec, quantize = config.model, config.stage.lora.quantize
    if spec.checkpoint is not None:
        if quantize:
            raise ValueError("stage.lora.quantize (QLoRA) needs model.vision/model.language, not model.checkpoint")
        verify_model_folder(spec.checkpoint, "model.checkpoint")
        model = LlavaKitForCausalLM.from_pretrained(spec.checkpoint, dtype=_torch_dtype(spec.dtype))
        saved = LlavaKitProcessor.from_pretrained(spec.checkpoint)
        check_data_fits_model(config.data, model.config)
        processor = (
            saved if _keeps_saved_processor(saved, config.data) else _processor_for(model, saved.tokenizer, config)
        )
    else:
        if spec.vision is None or spec.language is None:
            raise ValueError("set model.checkpoint, or both model.vision and model.language")
        tokenizer = load_tokenizer(spec)
        model = _compose(with_token_ids(spec, tokenizer), quantize)
        _fit_embeddings(model, len(tokenizer))
        processor = _processor_for(model, tokenizer, config)
    # Backbones composed from config dicts come without an attention implementation; name one for
    # every sub-model (transformers' default, sdpa, unless the config asks for another).
    model.set_attn_implementation(spec.attn_implementation or "sdpa")
    if spec.connector_weights is not None:
        load_trainable_weights(model, spec.connector_weights, "model.connector_weights")
    return model, processor


# ---- trainable weights ---------------------------------------------------------------------------


def trainable_weights_file(path: str | Path, key: str = "model.connector_weights") -> Path:
    """A run folder's `trainable.safetensors`, or the file itself (`key` names the setting in errors)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAINABLE_WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{key}: {path} does not exist (name a stage-1 run folder or its {TRAINABLE_WEIGHTS_NAME})"
        )
    if path.suffix not in (".safetensors", ".bin"):
        raise CheckpointError(f"{key}: {path} must be a .safetensors file (or an original LLaVA mm_projector.bin)")
    return path


def check_trainable_weights(path: str | Path, key: str = "model.connector_weights") -> Path:
    """The weights file `path` names, checked before a model is built for it (safetensors: intact)."""
    path = trainable_weights_file(path, key)
    if path.suffix == ".safetensors":
        try:
            check_safetensors_file(path)
        except CheckpointError as error:
            raise CheckpointError(f"{key}: {error}") from None
    return path


def read_trainable_weights(path: str | Path, key: str = "model.connector_weights") -> dict[str, torch.Tensor]:
    """Tensors by llavakit parameter name; an original LLaVA `mm_projector.bin` is renamed on the way."""
    path = trainable_weights_file(path, key)
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{key}: {path} is truncated or damaged ({error})") from None
    return llavakit_state_dict_from_original(state)


def load_trainable_weights(model: nn.Module, path: str | Path, key: str = "model.connector_weights") -> list[str]:
    """Copy the tensors of `path` into `model`'s parameters of the same names; return the names.

    Every name must exist in the model with the same shape (a connector trained for another
    vision or language width is an error, not a silent partial load).
    """
    tensors = read_trainable_weights(path, key)
    own = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise CheckpointError(
            f"{key}: {path} has {len(unknown)} weight(s) the model does not have: {', '.join(unknown[:8])}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"{key}: {path}: {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(own[name].shape)} (was it trained with another vision tower, connector or language model?)"
            )
        with torch.no_grad():
            own[name].copy_(tensor.to(own[name].dtype))
    logger.info("loaded %d tensor(s) from %s: %s", len(tensors), path, ", ".join(sorted(tensors)))
    return sorted(tensors)


def save_trainable_weights(state_dict: dict[str, torch.Tensor], names: list[str], directory: str | Path) -> Path:
    """Write the named entries of `state_dict` to `directory/trainable.safetensors`."""
    missing = [name for name in names if name not in state_dict]
    if missing:
        raise ValueError(f"the state dict lacks trainable weight(s): {', '.join(missing[:8])}")
    path = Path(directory) / TRAINABLE_WEIGHTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: state_dict[name].detach().contiguous().cpu() for name in names}, str(path), metadata={"format": "pt"}
    )
    return path


# ---- LoRA ----------------------------------------------------------------------------------------


# LoRA target names -> the fused 3-D expert weight of transformers' MoE layers that holds them.
FUSED_EXPERT_TARGETS = {"gate_up_proj": ("gate_proj", "up_proj", "gate_up_proj"), "down_proj": ("down_proj",)}


def expert_parameters(model: nn.Module, target_modules: list[str]) -> list[str]:
    """Full names of the language model's fused expert weights that `target_modules` names.

    transformers' MoE layers keep their experts as 3-D parameters (`experts.gate_up_proj`: every
    expert's gate and up projections stacked; `experts.down_proj`), not `nn.Linear`s, so a module
    target never reaches them: they are LoRA's `target_parameters`. `gate_proj` or `up_proj` adapts
    the whole fused `gate_up_proj`. Routers (`gate.weight`) are never among them.
    """
    wanted = set(target_modules)
    return [
        f"{module_name}.{name}"
        for module_name, module in model.named_modules()
        if module_name.startswith("language_model.")
        for name, parameter in module.named_parameters(recurse=False)
        if parameter.ndim == 3 and wanted & set(FUSED_EXPERT_TARGETS.get(name, ()))
    ]


def router_modules(model: nn.Module) -> list[str]:
    """Module names of the language model's routers: the `gate` beside each layer's `experts`."""
    return [
        f"{name}.gate"
        for name, module in model.named_modules()
        if name.startswith("language_model.")
        and isinstance(getattr(module, "experts", None), nn.Module)
        and isinstance(getattr(module, "gate", None), nn.Module)
    ]


def _empty_linears(model: nn.Module) -> list[str]:
    """Zero-width linear layers (an upcycled Qwen2-MoE's shared expert): nothing for an adapter to adapt."""
    return [
        name
        for name, module in model.named_modules()
        if name.startswith("language_model.") and isinstance(module, nn.Linear) and module.weight.numel() == 0
    ]


def apply_lora(model: LlavaKitForCausalLM, stage: StageConfig) -> nn.Module:
    """Wrap `model` with peft: LoRA adapters on the language model's `target_modules`.

    The connector (and the vision tower when `stage.train_vision`) trains whole and is saved
    with the adapter (`modules_to_save`), as LLaVA-1.5's LoRA recipe trains its projector.
    An MoE language model gets adapters on its experts too (`expert_parameters`, one low-rank pair
    per expert), none on its routers; the routers train whole instead (saved with the adapter): a
    few thousand weights per layer, and an upcycled model's start as noise that must learn to route.
    peft cannot apply dropout to expert weights, so those need `stage.lora.dropout=0`.
    """
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError:
        raise ValueError("stage.lora.enabled needs peft: pip install 'llavakit[train]'") from None
    lora = stage.lora
    experts = expert_parameters(model, lora.target_modules)
    if experts and lora.dropout:
        raise ValueError(
            f"stage.lora.dropout={lora.dropout}: LoRA on the language model's experts (fused weights such as "
            f"{experts[0]}) works without dropout only; set stage.lora.dropout=0, or leave gate_proj / up_proj / "
            "down_proj out of stage.lora.target_modules to adapt attention only"
        )
    if lora.quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    names = "|".join(sorted(lora.target_modules))
    keep = ["multi_modal_projector"] if stage.train_connector else []
    keep += ["vision_tower"] if stage.train_vision else []
    keep += router_modules(model)
    if stage.train_connector and getattr(model, "image_newline", None) is not None:
        logger.warning(
            "with LoRA the image_newline vector stays frozen: it is a bare parameter, not a module peft saves"
        )
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=rf".*language_model\..*\.({names})",
        target_parameters=experts or None,
        exclude_modules=_empty_linears(model) or None,
        modules_to_save=keep or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


__all__ = [
    "TRAINABLE_WEIGHTS_NAME",
    "FUSED_EXPERT_TARGETS",
    "apply_lora",
    "build_model_and_processor",
    "check_trainable_weights",
    "expert_parameters",
    "load_tokenizer",
    "load_trainable_weights",
    "read_trainable_weights",
    "router_modules",
    "save_trainable_weights",
    "trainable_weights_file",
    "with_token_ids",
]
