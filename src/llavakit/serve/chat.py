"""Ask a LLaVA model about images, a video, or nothing at all: one question or an interactive session.

`llavakit chat --model CKPT --image PHOTO.jpg --question "What is shown?"` loads a llavakit
checkpoint (weights + processor) through `llavakit.model.checkpoint.load_checkpoint`, as eval
does, so `--dtype`, `--device`, `--device-map` and `--load-in-4bit/8bit` mean the same in both.
Several `--image` make one multi-image question, `--video` a video question (a model with a
`<video>` token), and neither a text-only chat. With no `--model`, a tiny random model is built
from a config and a tokenizer trained on the spot, and it looks at a bundled picture unless
given another: its answers are noise, but every step of the real path runs (image
preprocessing, `<image>` expansion, vision tower, connector, KV-cache generation), offline, in
seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from transformers import BatchFeature, TextStreamer

from llavakit.errors import ConfigError
from llavakit.model.checkpoint import (
    check_checkpoint_folder,
    check_placement,
    inference_dtype,
    load_checkpoint,
    note_slow_dtype,
    read_checkpoint_config,
)
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.images import load_image
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.processing.video import video_frames
from llavakit.tiny import build_tiny_tokenizer, tiny_llava_config

PathLike = str | Path


def bundled_image_path() -> Path:
    """A small picture shipped with the package (three coloured shapes)."""
    return Path(str(resources.files("llavakit") / "assets" / "shapes.png"))


def tiny_random_chat_model(seed: int = 0) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor]:
    """A tiny random LLaVA (CLIP + Llama shapes) and its processor, built offline."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_llava_config(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = LlavaKitForCausalLM(config)
    processor = LlavaKitProcessor.from_model_config(tokenizer, config, template="vicuna_v1", image_aspect="pad")
    return model, processor


def load_chat_model(
    checkpoint: PathLike | None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    device_map: str | dict | None = None,
    quantization: str | None = None,
) -> tuple[LlavaKitForCausalLM, LlavaKitProcessor]:
    """A saved llavakit checkpoint with its processor, or the tiny random model when None.

    Placement, dtype and folder are checked before anything loads (`llavakit.model.checkpoint`):
    a missing or wrong folder, a damaged file, an absent device or quantization without CUDA is a
    one-line error. `dtype` None: float32 on the CPU, the checkpoint's own on a GPU
    (`inference_dtype`). The tiny random model goes to one device only, unquantized.
    """
    dtype = inference_dtype(dtype, device, device_map, quantization)
    if checkpoint is not None:
        return load_checkpoint(
            checkpoint, LlavaKitProcessor, device, dtype, device_map=device_map, quantization=quantization
        )
    placement = check_placement(device, device_map, quantization)
    if placement is None or quantization is not None:
        raise ConfigError("--device-map and --load-in-4bit/8bit need a checkpoint (--model)")
    model, processor = tiny_random_chat_model()
    model = model.to(placement, dtype=dtype if isinstance(dtype, torch.dtype) else None)
    note_slow_dtype(model)
    return model.eval(), processor


def check_video_model(checkpoint: PathLike | None) -> None:
    """A video question needs a model with a `<video>` token: checked in config.json before the model loads."""
    if checkpoint is None:
        raise ConfigError("--video needs a model with a video token (--model); the tiny random model has none")
    folder = check_checkpoint_folder(checkpoint)
    if read_checkpoint_config(folder).get("video_token_id") is None:
        raise ConfigError(
            f"--video needs a model with a video token (video_token_id in config.json); {folder} has none: "
            "give the frames as --image files, or use a LLaVA-OneVision-style checkpoint"
        )


def _paths(images: PathLike | Sequence[PathLike] | None) -> list[Path]:
    """One path, several, or none, as a list."""
    if images is None:
        return []
    if isinstance(images, (str, Path)):
        return [Path(images)]
    return [Path(image) for image in images]


@dataclass
class ChatSession:
    """A conversation about some images, one video, or nothing (text only).

    The placeholders go in the first question, each image's `<image>` on its own line in the
    given order, then the video's `<video>`; later turns are text. Images and video frames are
    decoded once, when the session starts, so a broken file fails before any question.
    """

    model: LlavaKitForCausalLM
    processor: LlavaKitProcessor
    images: PathLike | Sequence[PathLike] | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    video: PathLike | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    _pictures: list[Image.Image] = field(init=False, repr=False, compare=False)
    _frames: list[Image.Image] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.images = _paths(self.images)
        self._pictures = [load_image(path) for path in self.images]
        self._frames = self._video_frames(self.video) if self.video is not None else None

    def _video_frames(self, video: PathLike) -> list[Image.Image]:
        """The video's frames, sampled as the processor samples them (its model must take videos)."""
        if self.processor.video is None:
            raise ConfigError(
                f"video {video}: this model has no video token (video_token_id), so it cannot take a video"
            )
        return video_frames(Path(video), self.processor.video.sampling, name=str(video))

    def _first_question(self, question: str) -> str:
        placeholders = [self.processor.image_token] * len(self._pictures)
        if self._frames is not None:
            placeholders.append(self.processor.video_token)
        return "\n".join([*placeholders, question])

    def conversation(self, question: str) -> list[dict[str, str]]:
        """The turns so far plus `question` as the next user turn (with the placeholders when it is the first)."""
        if not question.strip():
            raise ValueError("the question is empty")
        text = question if self.turns else self._first_question(question)
        return self.turns + [{"role": "user", "content": text}]

    def inputs(self, conversation: list[dict[str, str]]) -> BatchFeature:
        """Model inputs for `conversation`: ids and every picture, on the model's device, floats in its dtype."""
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        videos = [self._frames] if self._frames is not None else None
        inputs = self.processor(text=prompt, images=self._pictures or None, videos=videos, return_tensors="pt")
        return inputs.to(device=self.model.device, dtype=self.model.dtype)

    def ask(self, question: str, stream: bool = False) -> str:
        conversation = self.conversation(question)
        inputs = self.inputs(conversation)
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
