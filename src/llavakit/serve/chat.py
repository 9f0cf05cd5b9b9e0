"""Ask a LLaVA model about an image, one question or an interactive session.

`llavakit chat --model CKPT --image PHOTO.jpg --question "What is shown?"` loads a llavakit
checkpoint (weights + processor). With no `--model`, a tiny random model is built from a
config and a tokenizer trained on the spot: its answers are noise, but every step of the
real path runs (image preprocessing, `<image>` expansion, vision tower, connector, KV-cache
generation), offline, in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from transformers import TextStreamer

from llavakit.model.checkpoint import check_device, load_checkpoint
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.images import load_image
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import build_tiny_tokenizer, tiny_llava_config


def bundled_image_path() -> Path:
    """A small picture shipped with the package (three coloured shapes)."""
    return Path(str(resources.files("llavakit") / "assets" / "shapes.png"))


def tiny_random_chat_model(seed: int = 0) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor]:
    """A tiny random LLaVA (CLIP + Llama shapes) and its processor, built offline."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_llava_config(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = LlavaKitForCausalLM(config)
    processor = LlavaKitProcessor.from_model_config(tokenizer, config, template="vicuna_v1", image_mode="pad")
    return model, processor


def load_chat_model(
    checkpoint: str | Path | None, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor]:
    """A saved llavakit checkpoint with its processor, or the tiny random model when None.

    The device and the folder are checked before anything loads (`llavakit.model.checkpoint`):
    a missing or wrong folder, a damaged file or an absent device is a one-line error.
    """
    if checkpoint is not None:
        return load_checkpoint(checkpoint, LlavaKitProcessor, device=device, dtype=dtype)
    device = check_device(device)
    model, processor = tiny_random_chat_model()
    return model.to(device).eval(), processor


@dataclass
class ChatSession:
    """A conversation about one image; the image placeholder goes in the first question."""

    model: LlavaKitForCausalLM
    processor: LlavaKitProcessor
    image_path: Path
    max_new_tokens: int = 64
    temperature: float = 0.0
    turns: list[dict[str, str]] = field(default_factory=list)

    def ask(self, question: str, stream: bool = False) -> str:
        if not question.strip():
            raise ValueError("the question is empty")
        text = question if self.turns else f"<image>\n{question}"
        conversation = self.turns + [{"role": "user", "content": text}]
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        image = load_image(self.image_path)
        inputs = self.processor(text=prompt, images=[image], return_tensors="pt").to(self.model.device)
        tokenizer = self.processor.tokenizer
        sampling = dict(do_sample=True, temperature=self.temperature) if self.temperature > 0 else dict(do_sample=False)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.processor.stop_token_ids,
                pad_token_id=tokenizer.pad_token_id,
                streamer=streamer,
                **sampling,
            )
        answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        self.turns = conversation + [{"role": "assistant", "content": answer}]
        return answer
