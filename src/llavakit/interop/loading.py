"""Building a model from a renamed state dict: strictly, without copying tensors.

Every conversion (transformers Llava / LlavaNext / OneVision, original LLaVA) ends here, so
one place decides that a missing or left-over weight is an error.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig

from llavakit.interop.keys import StateDict


def load_strict(model_class, config: PreTrainedConfig, state_dict: StateDict, dtype: torch.dtype | None):
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


def carry_generation_defaults(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """The converted model keeps image and video placeholders out of generated text as the source does."""
    suppressed = source.generation_config.suppress_tokens
    target.generation_config.suppress_tokens = list(suppressed) if suppressed is not None else None


def check_text_layout(language_model: torch.nn.Module) -> None:
    """Export renames `language_model.model.*`: the decoder must sit under `.model`."""
    if getattr(language_model, "base_model_prefix", None) != "model":
        raise ValueError(
            f"{type(language_model).__name__} keeps its decoder under {language_model.base_model_prefix!r}; "
            "conversion supports language models whose decoder is `.model` (Llama, Mistral, Qwen2, ...)"
        )
