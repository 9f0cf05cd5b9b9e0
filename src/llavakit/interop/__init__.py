"""Checkpoint folders in and out: transformers Llava / LlavaNext / LlavaOnevision and original LLaVA."""
