"""Checkpoint folders checked before anything loads, so a wrong or damaged one is named in one line.

`llavakit chat --model`, `llavakit eval` and `llavakit export` load a llavakit checkpoint
folder (config.json, model weights, processor files) with `load_checkpoint`; `llavakit
import` reads its source with the same checks. Each folder a user points at by mistake gets
its own message: a path that does not exist (these commands read local folders only, so a
typo never turns into a hub download), a data folder, a stage-1 run folder (connector weights
only), a LoRA adapter folder, a transformers or original LLaVA folder (convert it with
`llavakit import` first). Damaged files (a config.json that is not JSON, a truncated
safetensors file, a shard missing from its index) are named before transformers reads them,
and weights that do not fit the config are an error, never a silently random-initialised part.

The same function loads for every command, so chat, eval and serving place and cast a model
alike: a dtype, one device or accelerate's device map (`device_map="auto"` through
`from_pretrained`), and bitsandbytes 4-/8-bit quantization of the language model (CUDA only).
What this machine cannot do (a missing device, quantization without CUDA or bitsandbytes, a
device together with a device map) is refused in one line before anything loads.

    model, processor = load_checkpoint("runs/stage2", LlavaKitProcessor, device="cuda")
    model, processor = load_checkpoint("runs/stage2", LlavaKitProcessor, dtype="bfloat16", device_map="auto")
"""

from __future__ import annotations

import importlib.util
import json
import logging
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import BitsAndBytesConfig

from llavakit.errors import CheckpointError, ConfigError, DeviceError, LlavaKitError
from llavakit.model.modeling import LlavaKitForCausalLM

CONFIG_FILE = "config.json"
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# What `llavakit train` writes instead of a whole model while the language model is frozen (stage 1).
STAGE1_WEIGHTS = "trainable.safetensors"
LORA_ADAPTER_CONFIG = "adapter_config.json"
# JSON files that transformers' and llavakit's loaders read: parsed here first, so a damaged one is named.
JSON_FILES = (
    CONFIG_FILE,
    "generation_config.json",
    "llavakit_processor.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    *WEIGHT_INDEXES,
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
DATA_SUFFIXES = (".json", ".jsonl", ".png", ".jpg", ".jpeg", ".mp4")
_LOADING_PROBLEMS = ("missing_keys", "mismatched_keys", "unexpected_keys")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies
QUANTIZATIONS = ("4bit", "8bit")
# Left unquantized by `quantization`: the vision tower and connector, as LLaVA's builder keeps them (its
# vision tower loads on its own, its projector is in llm_int8_skip_modules), and the LM head, which
# transformers skips by default but not once a skip list is given.
UNQUANTIZED_MODULES = ("vision_tower", "multi_modal_projector", "language_model.lm_head")

logger = logging.getLogger(__name__)

# ---- devices ------------------------------------------------------------------------------------


def available_devices() -> list[str]:
    """`cpu` and every accelerator device torch sees here, written as `--device` takes them."""
    devices = ["cpu"]
    if torch.accelerator.is_available():
        kind = torch.accelerator.current_accelerator().type
        devices += [f"{kind}:{index}" for index in range(torch.accelerator.device_count())]
    return devices


def _present(device: torch.device) -> bool:
    """The CPU, or this machine's accelerator type with an index it has (none: the current one)."""
    if device.type == "cpu":
        return True
    if not torch.accelerator.is_available() or torch.accelerator.current_accelerator().type != device.type:
        return False
    return device.index is None or device.index < torch.accelerator.device_count()


def check_device(device: str | torch.device) -> torch.device:
    """`device` parsed and present on this machine: checked before a model loads, naming what is available."""
    available = ", ".join(available_devices())
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"device {str(device)!r} is not a device name (available here: {available})") from error
    if not _present(parsed):
        raise DeviceError(f"device {str(device)!r} is not available on this machine (available: {available})")
    return parsed


# ---- files --------------------------------------------------------------------------------------


def read_json_file(path: str | Path) -> Any:
    """A JSON file's content; a CheckpointError names the file when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path} is truncated or damaged: not valid JSON ({error})") from error


def check_safetensors_file(path: Path) -> None:
    """Read the header, which must cover the file: a truncated or foreign file fails here, named."""
    try:
        with safe_open(path, framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is truncated or damaged ({path.name} is not a readable safetensors file: {error}); "
            "copy or save it again"
        ) from error


def check_torch_file(path: Path, checksums: bool = False) -> None:
    """A PyTorch file that is not cut short; with `checksums`, a `torch.save` zip whose parts all match.

    Without `checksums` a legacy (non-zip) `.bin` passes and a zip file needs only its directory
    (cheap, for model weights read next anyway); with them every part is read and checked against
    its CRC, which catches changed bytes `torch.load` would load as wrong numbers (for resumes).
    """
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == b"PK\x03\x04"
    if path.stat().st_size == 0 or ((is_zip or checksums) and not zipfile.is_zipfile(path)):
        raise CheckpointError(f"{path} is truncated or damaged: not a complete PyTorch file")
    if not checksums:
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad_part = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"{path} is truncated or damaged: not a complete PyTorch file ({error})") from None
    if bad_part is not None:
        raise CheckpointError(f"{path} is damaged: its part {bad_part} fails its checksum")


def _indexed_files(index: Path) -> list[Path]:
    data = read_json_file(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map: the index is damaged")
    files = [index.parent / str(name) for name in sorted(set(weight_map.values()))]
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{index} names the shard {file.name}, which is missing from {index.parent}")
    return files


def weight_files(folder: str | Path) -> list[Path]:
    """The files holding `folder`'s model weights (an index's shards, or the single file), each checked.

    Empty when the folder has none; a CheckpointError names a damaged or missing one.
    """
    folder = Path(folder)
    index = next((folder / name for name in WEIGHT_INDEXES if (folder / name).is_file()), None)
    if index is not None:
        files = _indexed_files(index)
    else:
        files = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()][:1]
    for file in files:
        check_safetensors_file(file) if file.suffix == ".safetensors" else check_torch_file(file)
    return files


# ---- folders ------------------------------------------------------------------------------------


def check_folder_exists(path: str | Path, what: str = "checkpoint folder") -> Path:
    """`path` as an existing local folder; no hub lookup, so a typo is named instead of downloaded."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{what} {path} does not exist (llavakit reads checkpoints from local folders; "
            "download a hub model first, e.g. `hf download NAME --local-dir DIR`)"
        )
    if not path.is_dir():
        raise CheckpointError(f"{what} {path} is a file, not a checkpoint folder")
    return path


def _not_a_checkpoint(folder: Path) -> str:
    """Why a folder without config.json is no checkpoint, with what it looks like instead."""
    if (folder / LORA_ADAPTER_CONFIG).is_file():
        merged = folder / "merged"
        where = f"load {merged} instead" if merged.is_dir() else "train with output.merge_lora=true, load merged/"
        return f"{folder} is a LoRA adapter folder ({LORA_ADAPTER_CONFIG}), not a whole model: {where}"
    checkpoints = sorted(path.name for path in folder.glob("checkpoint-*") if path.is_dir())
    if checkpoints:
        return f"{folder} has no config.json: its run wrote no final model; load a checkpoint such as {checkpoints[-1]}"
    data = sorted(path.name for path in folder.iterdir() if path.suffix.lower() in DATA_SUFFIXES)
    held = f" (it holds data files such as {', '.join(data[:3])})" if data else ""
    return f"{folder} has no config.json: it is not a checkpoint folder{held}"


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """`folder/config.json` as a dict; a missing, damaged or non-object config is a CheckpointError."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(_not_a_checkpoint(folder))
    config = read_json_file(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not a model config")
    return config


def _foreign_checkpoint(folder: Path, config: dict[str, Any]) -> str:
    """Why a config of another model type cannot be loaded here, and what to do about it."""
    model_type = config.get("model_type")
    if str(model_type).startswith("llava") or "mm_vision_tower" in config:
        kind = "an original LLaVA" if "mm_vision_tower" in config else "a transformers Llava"
        return (
            f"{folder} is {kind} checkpoint (model_type {model_type!r}), not a llavakit one: "
            f"convert it first with `llavakit import {folder} OUT` and use OUT"
        )
    return f"{folder} holds a {model_type!r} model (config.json), not a llavakit checkpoint (model_type 'llavakit')"


def _no_weights(folder: Path) -> str:
    if (folder / STAGE1_WEIGHTS).is_file():
        return (
            f"{folder} is a stage-1 run folder: it holds only the trained connector ({STAGE1_WEIGHTS}), "
            f"not a whole model; use it in a stage-2 recipe as model.connector_weights={folder} "
            "(llavakit train) and load that run's folder"
        )
    names = " or ".join((*WEIGHT_FILES, WEIGHT_INDEXES[0]))
    return f"{folder} has a llavakit config.json but no model weights ({names})"


def check_json_files(folder: Path) -> None:
    """Every JSON file a loader will read in `folder` parses; a damaged one is named."""
    for name in JSON_FILES:
        if (folder / name).is_file():
            read_json_file(folder / name)


def check_checkpoint_folder(path: str | Path, what: str = "checkpoint folder") -> Path:
    """`path` as a llavakit checkpoint folder whose files are readable, or a CheckpointError saying what it is."""
    folder = check_folder_exists(path, what)
    config = read_checkpoint_config(folder)
    if config.get("model_type") != "llavakit":
        raise CheckpointError(_foreign_checkpoint(folder, config))
    check_json_files(folder)
    if not weight_files(folder):
        raise CheckpointError(_no_weights(folder))
    return folder


# ---- load options: dtype, placement, quantization -----------------------------------------------


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """A dtype name or torch dtype as a torch dtype; `auto` and None (the checkpoint's own) as they are."""
    if dtype is None or dtype == "auto":
        return dtype
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"dtype {str(dtype)!r} is not one of auto, {', '.join(DTYPES)}")


def _runs_on_accelerator(
    device: str | torch.device | None, device_map: str | dict | None, quantization: str | None
) -> bool:
    """Whether the model will run on a GPU (or another accelerator) rather than the CPU."""
    if quantization is not None:
        return True
    if device_map is not None:
        return torch.accelerator.is_available()
    return device is not None and str(device).split(":")[0] != "cpu"


def inference_dtype(
    dtype: str | torch.dtype | None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    quantization: str | None = None,
) -> torch.dtype | str:
    """The dtype chat, eval and serving load a checkpoint in: `dtype` when given; else float32 on the CPU
    (half-precision matmuls are slow on most CPUs) and the checkpoint's own (`auto`, as transformers
    loads) on a GPU, with a device map or quantized."""
    if dtype is not None:
        return parse_dtype(dtype)
    return "auto" if _runs_on_accelerator(device, device_map, quantization) else torch.float32


def check_quantization(quantization: str | None) -> None:
    """bitsandbytes needs a CUDA GPU and its package; either missing is one line, before anything loads."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    flag = f"--load-in-{quantization}"
    if not torch.cuda.is_available():
        raise DeviceError(
            f"{flag} needs a CUDA GPU (bitsandbytes quantizes on CUDA only) and this machine has none "
            f"(available: {', '.join(available_devices())}); leave it out, or use --dtype bfloat16 to halve the memory"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{flag} needs bitsandbytes: pip install 'llavakit[qlora]'")


def check_placement(
    device: str | torch.device | None, device_map: str | dict | None, quantization: str | None = None
) -> torch.device | None:
    """Where the model will go, checked before anything loads: its device, or None when `device_map` places it.

    A device map places every part itself, so it excludes `device`. Quantized weights go to a CUDA
    device (default: the current one).
    """
    check_quantization(quantization)
    if device_map is not None:
        if device is not None:
            raise ConfigError(
                f"--device-map {device_map} places the model's parts itself: give it or --device {device}, not both"
            )
        if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
            raise ConfigError(f"device map {device_map!r} is not one of {', '.join(DEVICE_MAPS)} (or a dict)")
        return None
    placement = check_device(device if device is not None else ("cuda" if quantization else "cpu"))
    if quantization is not None and placement.type != "cuda":
        raise DeviceError(f"--load-in-{quantization} needs a CUDA device, not {str(device)!r}")
    return placement


# ---- loading ------------------------------------------------------------------------------------


@contextmanager
def checkpoint_errors(folder: str | Path, part: str) -> Iterator[None]:
    """A library's error while reading `part` of `folder`, re-raised as a CheckpointError naming both."""
    try:
        yield
    except LlavaKitError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
        raise CheckpointError(f"{folder}: cannot load the {part}: {error}") from error


def check_loading_info(folder: str | Path, info: dict[str, Any], problems: tuple[str, ...] = _LOADING_PROBLEMS) -> None:
    """Weights that do not fit the config are an error: a missing one would be silently random."""
    found = {name: sorted(map(str, info.get(name) or ())) for name in problems if info.get(name)}
    if found:
        said = "; ".join(
            f"{name.replace('_', ' ')}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
            for name, keys in found.items()
        )
        raise CheckpointError(f"{folder}: the weights do not fit the model config.json describes: {said}")


def _checkpoint_dtype(folder: Path) -> torch.dtype:
    """The dtype a checkpoint's config.json says its weights are in (float16, as LLaVA's builder, when it says none)."""
    config = read_checkpoint_config(folder)
    return DTYPES.get(str(config.get("dtype") or config.get("torch_dtype")), torch.float16)


def quantization_config(quantization: str, dtype: torch.dtype) -> BitsAndBytesConfig:
    """bitsandbytes settings that quantize the language model's layers only, computing in `dtype`.

    4-bit is NF4 with double quantization, as LLaVA's builder loads it; the modules of
    `UNQUANTIZED_MODULES` keep `dtype`.
    """
    skip = list(UNQUANTIZED_MODULES)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def note_slow_dtype(model: torch.nn.Module) -> None:
    """Say so when a model will run float16 on the CPU, which works but is slow there."""
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.dtype == torch.float16 and parameter.device.type == "cpu":
        logger.warning(
            "float16 on the CPU: most CPUs have no fast float16 matrix kernels, so this runs slowly; "
            "float32 (or bfloat16 on CPUs with bfloat16 support) is faster there"
        )


def _from_pretrained_options(
    folder: Path,
    placement: torch.device | None,
    dtype: torch.dtype | str | None,
    device_map: str | dict | None,
    quantization: str | None,
) -> dict[str, Any]:
    """`from_pretrained`'s dtype, device_map and quantization_config for these load options."""
    options: dict[str, Any] = {"dtype": "auto" if dtype is None else dtype}
    if quantization is not None:
        compute = options["dtype"] if isinstance(options["dtype"], torch.dtype) else _checkpoint_dtype(folder)
        options["dtype"] = compute
        options["quantization_config"] = quantization_config(quantization, compute)
        if device_map is None:  # one CUDA device, with its index: bitsandbytes places weights as they load
            index = placement.index if placement.index is not None else torch.cuda.current_device()
            device_map = {"": f"cuda:{index}"}
    if device_map is not None:
        options["device_map"] = device_map
    return options


def _load_checked_model(
    folder: Path,
    placement: torch.device | None,
    dtype: torch.dtype | str | None,
    device_map: str | dict | None = None,
    quantization: str | None = None,
) -> LlavaKitForCausalLM:
    options = _from_pretrained_options(folder, placement, dtype, device_map, quantization)
    with checkpoint_errors(folder, "model"):
        model, info = LlavaKitForCausalLM.from_pretrained(
            folder, local_files_only=True, output_loading_info=True, **options
        )
    check_loading_info(folder, info)
    if "device_map" not in options:  # otherwise from_pretrained placed every part
        model = model.to(placement)
    note_slow_dtype(model)
    return model.eval()


def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    device_map: str | dict | None = None,
    quantization: str | None = None,
) -> LlavaKitForCausalLM:
    """A llavakit checkpoint's model, in eval mode; placement, dtype and folder are checked first.

    See `load_checkpoint` for the arguments.
    """
    placement = check_placement(device, device_map, quantization)
    dtype = parse_dtype(dtype)
    return _load_checked_model(check_checkpoint_folder(path), placement, dtype, device_map, quantization)


def load_checkpoint(
    path: str | Path,
    processor_class: type,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    device_map: str | dict | None = None,
    quantization: str | None = None,
) -> tuple[LlavaKitForCausalLM, Any]:
    """A llavakit checkpoint's model and processor; placement, dtype and folder are checked before either loads.

    `processor_class`: `LlavaKitProcessor` (passed in because this package sits below `processing`).
    `device`: where the whole model goes (default: the CPU, or the current CUDA device when quantizing).
    `dtype`: `bfloat16`, `float16`, `float32`, a torch dtype, or None / `auto` for the checkpoint's own
    (what transformers loads; chat, eval and serving pick theirs with `inference_dtype`).
    `device_map`: `auto` (or another accelerate strategy, or a dict) spreads the parts over the GPUs,
    then the CPU, through `from_pretrained`; it excludes `device`.
    `quantization`: `4bit` or `8bit` loads the language model through bitsandbytes (CUDA only);
    the vision tower, connector and LM head stay unquantized (`UNQUANTIZED_MODULES`).
    """
    placement = check_placement(device, device_map, quantization)
    dtype = parse_dtype(dtype)
    folder = check_checkpoint_folder(path)
    with checkpoint_errors(folder, "processor"):
        processor = processor_class.from_pretrained(folder)
    return _load_checked_model(folder, placement, dtype, device_map, quantization), processor
