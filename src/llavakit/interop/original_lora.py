"""LoRA output folders of the original LLaVA / LLaVA-NeXT trainer -> one merged original-layout state dict.

Why: the original trainer run with `--lora_enable` writes no whole model. Its output folder
holds `adapter_config.json` + `adapter_model.safetensors` (or `.bin`): LoRA on the language
model; `non_lora_trainables.bin`: the connector (and the newline vector, a tuned vision tower)
under `base_model.model.model.*`; and `config.json`: the LLaVA config. The language model's
own weights stay in the base checkpoint the adapter was trained on. The original loader
(`load_pretrained_model` with a `model_base`) loads the base, then the non-LoRA weights,
then merges the adapter with peft; this module does the same, and the merged weights import
like any original folder (`original_llava.import_original_llava(..., state_dict=...)`).

    base = lora_base_folder("runs/llava-lora", base=None)  # --base, else adapter_config.json's
    weights = merged_lora_weights("runs/llava-lora", base)
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

from llavakit.errors import CheckpointError
from llavakit.interop.keys import StateDict
from llavakit.interop.loading import load_strict
from llavakit.interop.original_llava import is_original_llava_checkpoint, load_original_weights
from llavakit.model.checkpoint import (
    LORA_ADAPTER_CONFIG,
    check_safetensors_file,
    check_torch_file,
    read_json_file,
    weight_files,
)

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
NON_LORA_WEIGHTS = "non_lora_trainables.bin"


def is_original_lora_folder(folder: str | Path) -> bool:
    """True for an original trainer's LoRA output: an adapter beside an original LLaVA config.json."""
    folder = Path(folder)
    return (folder / LORA_ADAPTER_CONFIG).is_file() and is_original_llava_checkpoint(folder)


def _adapter_config(folder: Path) -> dict:
    config = read_json_file(folder / LORA_ADAPTER_CONFIG)
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / LORA_ADAPTER_CONFIG} holds a JSON {type(config).__name__}, not a LoRA config")
    return config


def check_lora_folder(folder: Path) -> None:
    """The adapter weights and the non-LoRA weights are there and readable; a missing one is named."""
    _adapter_config(folder)
    adapter = next((folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()), None)
    if adapter is None:
        raise CheckpointError(
            f"{folder} has {LORA_ADAPTER_CONFIG} but no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})"
        )
    check_safetensors_file(adapter) if adapter.suffix == ".safetensors" else check_torch_file(adapter)
    non_lora = folder / NON_LORA_WEIGHTS
    if not non_lora.is_file():
        raise CheckpointError(
            f"{folder} is a LoRA output of the original trainer without {NON_LORA_WEIGHTS}, which holds its "
            "connector: copy it from the training run's output folder"
        )
    check_torch_file(non_lora)


def _missing_base(folder: Path, base: str | Path | None, named: str | None) -> CheckpointError:
    """The error for a base that is not a local folder, naming --base and the adapter's own record."""
    if base is not None:
        return CheckpointError(
            f"{folder} is a LoRA output; its base language model --base {base} is not a local folder "
            f"(its {LORA_ADAPTER_CONFIG} names {named!r}): pass --base DIR, a local copy of that base"
        )
    return CheckpointError(
        f"{folder} is a LoRA output; its base language model {named!r} ({LORA_ADAPTER_CONFIG}'s "
        "base_model_name_or_path) is not a local folder and no --base was given: download it "
        f"(hf download {named} --local-dir DIR) and pass --base DIR"
    )


def lora_base_folder(folder: str | Path, base: str | Path | None) -> Path:
    """The base language model's local folder: `base` when given, else adapter_config.json's base_model_name_or_path.

    A base that is not a local folder with weights is a CheckpointError naming both places.
    """
    folder = Path(folder)
    named = _adapter_config(folder).get("base_model_name_or_path")
    if base is None and not named:
        raise CheckpointError(
            f"{folder} is a LoRA output whose {LORA_ADAPTER_CONFIG} names no base_model_name_or_path: "
            "pass --base FOLDER, the language model it was trained on"
        )
    path = Path(base if base is not None else named)
    if not path.is_dir():
        raise _missing_base(folder, base, named)
    if not weight_files(path):
        raise CheckpointError(f"the base language model folder {path} of the LoRA output {folder} has no model weights")
    return path


def _non_lora_weights(folder: Path) -> StateDict:
    """`non_lora_trainables.bin` in the original layout: the peft `base_model.` and outer `model.` prefixes gone."""
    weights = torch.load(folder / NON_LORA_WEIGHTS, map_location="cpu", weights_only=True)
    weights = {key.removeprefix("base_model."): tensor for key, tensor in weights.items()}
    if any(key.startswith("model.model.") for key in weights):
        weights = {key.removeprefix("model."): tensor for key, tensor in weights.items()}
    return weights


def _language_model(text_config: PreTrainedConfig, weights: StateDict) -> tuple[PreTrainedModel, StateDict]:
    """The base language model built from `weights` (no copy), and the weights it has no place for."""
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(text_config)
    names = set(skeleton.state_dict())
    own = {key: tensor for key, tensor in weights.items() if key in names}
    rest = {key: tensor for key, tensor in weights.items() if key not in names}
    dtype = own["model.embed_tokens.weight"].dtype if "model.embed_tokens.weight" in own else None
    return load_strict(type(skeleton), text_config, own, dtype), rest


def _peft():
    """peft, which merging needs (llavakit's `train` extra)."""
    try:
        import peft
    except ImportError as error:
        raise CheckpointError(
            "merging a LoRA output folder needs peft: pip install 'llavakit[train]' (or pip install peft)"
        ) from error
    return peft


def _merged(language_model: PreTrainedModel, folder: Path) -> StateDict:
    """The language model's weights with the adapter merged in.

    Adapter weights that land on no module, or adapted modules without weights, are an error:
    either would leave the merged model different from the trained one.
    """
    peft = _peft()
    model = peft.PeftModel(language_model, peft.PeftConfig.from_pretrained(str(folder)))
    result = peft.set_peft_model_state_dict(model, peft.utils.load_peft_weights(str(folder)))
    unexpected = sorted(result.unexpected_keys)
    missing = sorted(key for key in result.missing_keys if "lora_" in key)
    if unexpected or missing:
        raise CheckpointError(
            f"{folder}: the LoRA adapter does not fit the language model of config.json: "
            f"weights for modules it lacks {unexpected[:6]}, adapted modules without weights {missing[:6]}"
        )
    return model.merge_and_unload().state_dict()


def merged_lora_weights(folder: str | Path, base: Path, text_config: PreTrainedConfig) -> StateDict:
    """The original-layout weights a LoRA output stands for, merged as the original loader merges them.

    The base's weights, overwritten by the non-LoRA trainables (connector, newline, tuned
    tower, fully trained LLM tensors), with the LoRA deltas merged into the language model.
    `text_config`: the language model config of the folder's config.json.
    """
    folder = Path(folder)
    weights = load_original_weights(base)
    weights.update(_non_lora_weights(folder))
    language_model, rest = _language_model(text_config, weights)
    return {**_merged(language_model, folder), **rest}
