"""llavakit: build, train, evaluate and serve LLaVA-family multimodal models.

The public API is a few verbs and the classes they return. Each name is imported on first
use (PEP 562 module `__getattr__`), so `import llavakit` and `llavakit --help` stay fast:
torch and transformers load only when a name that needs them is touched.

    from llavakit import ModelSpec, build_model, LlavaKitProcessor, load_image
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "LlavaKitConfig": "llavakit.model.configuration",
    "LlavaKitForCausalLM": "llavakit.model.modeling",
    "ModelSpec": "llavakit.model.build",
    "build_model": "llavakit.model.build",
    "LlavaKitProcessor": "llavakit.processing.processor",
    "prepare_tokenizer": "llavakit.processing.tokenizer",
    "load_image": "llavakit.processing.images",
    "load_config": "llavakit.train.config",
    "run_training": "llavakit.train.run",
    "evaluate": "llavakit.eval.runner",
    "import_checkpoint": "llavakit.interop.folders",
    "export_checkpoint": "llavakit.interop.folders",
}

__all__ = [
    "LlavaKitConfig",
    "LlavaKitForCausalLM",
    "LlavaKitProcessor",
    "ModelSpec",
    "build_model",
    "evaluate",
    "export_checkpoint",
    "import_checkpoint",
    "load_config",
    "load_image",
    "prepare_tokenizer",
    "run_training",
]

if TYPE_CHECKING:
    from llavakit.eval.runner import evaluate
    from llavakit.interop.folders import export_checkpoint, import_checkpoint
    from llavakit.model.build import ModelSpec, build_model
    from llavakit.model.configuration import LlavaKitConfig
    from llavakit.model.modeling import LlavaKitForCausalLM
    from llavakit.processing.images import load_image
    from llavakit.processing.processor import LlavaKitProcessor
    from llavakit.processing.tokenizer import prepare_tokenizer
    from llavakit.train.config import load_config
    from llavakit.train.run import run_training


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llavakit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
