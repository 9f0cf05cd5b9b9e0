"""A checked chat request as model inputs: the conversation, its images, its token counts.

Messages become the conversation `llavakit chat` builds: a message's parts are joined by
newlines in their order, each image part as one `<image>` placeholder, so `[image, text]`
gives `<image>\\nquestion` exactly as `ChatSession` writes a first question about one image.
The processor renders the model's template and expands the placeholders, so `prompt_tokens`
counts the image tokens. Everything a client can get wrong is a 400 naming the message and
part: a placeholder typed as text, an image outside a user message, too many images, turns
out of order, a prompt that leaves no room for the answer in the model's context.

`prepare` runs in a worker thread. The processor (with its fast tokenizer, which must not
encode from two threads at once) is used under a lock, one request at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BatchFeature

from llavakit.processing.processor import LlavaKitProcessor
from llavakit.serve.api_errors import bad_request
from llavakit.serve.image_sources import load_request_image
from llavakit.serve.openai_format import ChatCompletionRequest, ImagePart, Message
from llavakit.serve.sampling import SamplingParams
from llavakit.serve.settings import ServeSettings

_ROLES = {"developer": "system"}  # OpenAI's newer name for the system message


@dataclass
class PreparedPrompt:
    """Model inputs of one request (on the model's device, floats in its dtype) and what it may generate."""

    inputs: BatchFeature
    prompt_tokens: int
    params: SamplingParams


@dataclass
class _Conversation:
    turns: list[dict[str, str]]
    image_urls: list[tuple[str, str]]  # (url, param) in placeholder order


class PromptBuilder:
    """Turns requests into model inputs with one model's processor, within a server's limits."""

    def __init__(
        self,
        processor: LlavaKitProcessor,
        settings: ServeSettings,
        context_length: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.processor = processor
        self.settings = settings
        self.context_length = context_length
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._reserved = [processor.image_token] + ([processor.video_token] if processor.video is not None else [])

    def _text(self, text: str, param: str) -> str:
        for token in self._reserved:
            if token in text:
                raise bad_request(
                    f"{param}: the text holds {token!r}, which this model reserves for its images; "
                    "send images as image_url parts",
                    param,
                    "reserved_token",
                )
        return text

    def _message_text(self, message: Message, index: int, image_urls: list[tuple[str, str]]) -> str:
        """One message's content as text, with a placeholder per image (whose URL goes to `image_urls`)."""
        param = f"messages[{index}].content"
        if isinstance(message.content, str):
            return self._text(message.content, param)
        pieces = []
        for number, part in enumerate(message.content):
            part_param = f"{param}[{number}]"
            if isinstance(part, ImagePart):
                if message.role != "user":
                    raise bad_request(f"{part_param}: images are allowed in user messages only", part_param)
                image_urls.append((part.image_url.url, f"{part_param}.image_url.url"))
                pieces.append(self.processor.image_token)
            else:
                pieces.append(self._text(part.text, f"{part_param}.text"))
        return "\n".join(pieces)

    def conversation(self, request: ChatCompletionRequest) -> _Conversation:
        """The request's turns as text, and its image URLs, checked against the image limit."""
        turns, image_urls = [], []
        for index, message in enumerate(request.messages):
            text = self._message_text(message, index, image_urls)
            turns.append({"role": _ROLES.get(message.role, message.role), "content": text})
        if len(image_urls) > self.settings.max_images:
            raise bad_request(
                f"the request has {len(image_urls)} images, more than the limit of {self.settings.max_images}",
                "messages",
                "too_many_images",
            )
        if turns[-1]["role"] != "user":
            raise bad_request(f"the last message must be a user message, not {request.messages[-1].role!r}", "messages")
        return _Conversation(turns, image_urls)

    def _prompt(self, turns: list[dict[str, str]]) -> str:
        try:
            return self.processor.apply_chat_template(turns, add_generation_prompt=True)
        except ValueError as error:  # turns out of order, an empty conversation
            raise bad_request(f"messages: {error}", "messages", "invalid_conversation") from None

    def _encode(self, prompt: str, images: list[Image.Image]) -> BatchFeature:
        with self._lock:
            try:
                inputs = self.processor(text=prompt, images=images or None, return_tensors="pt")
            except ValueError as error:
                raise bad_request(f"messages: {error}", "messages", "invalid_conversation") from None
        return inputs.to(device=self.device, dtype=self.dtype)

    def _max_tokens(self, request: ChatCompletionRequest, prompt_tokens: int) -> int:
        """The answer's token budget; a prompt and budget past the context is OpenAI's context error."""
        room = self.context_length - prompt_tokens
        asked = request.requested_max_tokens
        if room < 1 or (asked is not None and asked > room):
            wanted = prompt_tokens + (asked or 1)
            raise bad_request(
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{wanted} tokens ({prompt_tokens} in the messages, images included, {asked or 1} in the completion). "
                "Please reduce the length of the messages, the images or the completion (max_tokens).",
                "max_tokens" if asked is not None and room >= 1 else "messages",
                "context_length_exceeded",
            )
        return asked if asked is not None else min(self.settings.default_max_tokens, room)

    def prepare(self, request: ChatCompletionRequest) -> PreparedPrompt:
        """Model inputs and sampling for `request`, or a 400 naming what is wrong with it."""
        conversation = self.conversation(request)
        prompt = self._prompt(conversation.turns)
        images = [load_request_image(url, self.settings, param) for url, param in conversation.image_urls]
        inputs = self._encode(prompt, images)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        params = SamplingParams(
            max_tokens=self._max_tokens(request, prompt_tokens),
            temperature=request.temperature if request.temperature is not None else 1.0,
            top_p=request.top_p if request.top_p is not None else 1.0,
            stop=request.stop_sequences,
            seed=request.seed,
        )
        return PreparedPrompt(inputs, prompt_tokens, params)
