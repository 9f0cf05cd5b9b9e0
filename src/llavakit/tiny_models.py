"""Tiny model configs: a few-layer CLIP/SigLIP tower and Llama/Qwen2 LLM that build in milliseconds.

Used by the tests, the benchmarks and the offline `chat` of a random model: nothing is
downloaded, and the whole LLaVA path (encode, project, splice, decode) still runs.
"""

from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig, Qwen2Config, SiglipVisionConfig

from llavakit.model.configuration import LlavaKitConfig


def tiny_vision_config(kind: str = "clip", image_size: int = 32, patch_size: int = 8, hidden_size: int = 32):
    """A 3-layer vision encoder config (`clip` or `siglip`)."""
    common = dict(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    if kind == "clip":
        return CLIPVisionConfig(projection_dim=hidden_size, **common)
    if kind == "siglip":
        return SiglipVisionConfig(**common)
    raise ValueError(f"unknown tiny vision kind {kind!r}; use 'clip' or 'siglip'")


def tiny_text_config(kind: str = "llama", vocab_size: int = 640, hidden_size: int = 64, **overrides):
    """A 2-layer decoder config (`llama` or `qwen2`); `vocab_size` must cover the tokenizer."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    common.update(overrides)
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown tiny text kind {kind!r}; use 'llama' or 'qwen2'")


def tiny_llava_config(
    image_token_id: int,
    vocab_size: int = 640,
    connector: str = "mlp2x_gelu",
    vision: str = "clip",
    text: str = "llama",
    **kwargs,
) -> LlavaKitConfig:
    """A tiny LlavaKitConfig; `kwargs` set the LLaVA-level fields (feature layer, strategy...)."""
    return LlavaKitConfig(
        vision_config=tiny_vision_config(vision),
        text_config=tiny_text_config(text, vocab_size=vocab_size),
        connector=connector,
        image_token_id=image_token_id,
        **kwargs,
    )
