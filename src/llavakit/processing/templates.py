"""Conversation templates: a conversation becomes one prompt string plus the spans that carry loss.

LLaVA-family models are tuned with one fixed prompt format; training, evaluation and serving
must render it identically or quality quietly drops. Each template here does three things:

* `render(conversation)` gives the text and the character spans of every assistant answer
  (with its end token / separator): the processor puts labels on exactly the tokens there;
* `chat_template` is the same format as a Jinja string, so a processor exported to
  transformers (and vLLM / SGLang behind it) formats prompts identically; answers sit in
  `{% generation %}` blocks, so transformers' `return_assistant_tokens_mask` agrees too;
* `stop_token` is what ends an answer at generation time.

No template writes a BOS: the tokenizer adds its own (`<s>` for Llama-2/Vicuna,
`<|begin_of_text|>` for Llama-3), as transformers' `LlavaProcessor` does when it tokenizes.

Conversations come in LLaVA form (`[{"from": "human" | "gpt" | "system", "value": str}]`)
or chat form (`[{"role": "user" | "assistant" | "system", "content": str | [parts]}]`,
parts `{"type": "image"}` or `{"type": "text", "text": ...}`, joined by "\\n"). Both are
normalised to one list of `Turn`s first.

Keys are exact: `plain`, `vicuna_v1` (alias `llava_v1`), `chatml` (alias `qwen`), `llama3`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IMAGE_PLACEHOLDER = "<image>"

_LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
_CHAT_ROLES = {"user", "assistant", "system"}


@dataclass(frozen=True)
class Turn:
    """One message after normalisation: role is `system`, `user` or `assistant`."""

    role: str
    text: str


@dataclass(frozen=True)
class RenderedConversation:
    """The prompt text and the [start, end) character spans that carry labels."""

    text: str
    answer_spans: list[tuple[int, int]]


def _where(sample_id: Any) -> str:
    return f"sample {sample_id!r}: " if sample_id is not None else ""


def _content_text(content: Any, where: str, index: int) -> str:
    """Chat-form content (a string or a list of image/text parts) as one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence):
        kind = type(content).__name__
        raise ValueError(f"{where}message {index} content must be a string or a list of parts, got {kind}")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "image":
            parts.append(IMAGE_PLACEHOLDER)
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        else:
            raise ValueError(f"{where}message {index} has a content part that is neither image nor text: {part!r}")
    return "\n".join(parts)


def _to_turn(message: Any, where: str, index: int) -> Turn:
    if not isinstance(message, Mapping):
        raise ValueError(f"{where}message {index} is not a mapping: {message!r}")
    if "from" in message:
        role = _LLAVA_ROLES.get(message["from"])
        if role is None:
            raise ValueError(f"{where}message {index} has unknown role {message['from']!r}; use human, gpt or system")
        if not isinstance(message.get("value"), str):
            raise ValueError(f"{where}message {index} needs a string 'value'")
        return Turn(role, message["value"])
    if "role" in message:
        if message["role"] not in _CHAT_ROLES:
            role = message["role"]
            raise ValueError(f"{where}message {index} has unknown role {role!r}; use user, assistant or system")
        return Turn(message["role"], _content_text(message.get("content"), where, index))
    raise ValueError(f"{where}message {index} has neither 'from'/'value' nor 'role'/'content': {message!r}")


def normalize_conversation(conversation: Sequence[Mapping[str, Any]], sample_id: Any = None) -> list[Turn]:
    """Validate a conversation and return its turns.

    Rules: not empty; an optional system turn first; then user and assistant alternate,
    starting with user. Violations raise ValueError naming `sample_id`.
    """
    where = _where(sample_id)
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise ValueError(f"{where}a conversation must be a list of messages, got {type(conversation).__name__}")
    if len(conversation) == 0:
        raise ValueError(f"{where}the conversation is empty")
    turns = [_to_turn(message, where, i) for i, message in enumerate(conversation)]
    for i, turn in enumerate(turns):
        if turn.role == "system" and i != 0:
            raise ValueError(f"{where}a system message may only come first (found at message {i})")
        if i and turn.role == turns[i - 1].role:
            raise ValueError(f"{where}messages {i - 1} and {i} are both {turn.role!r} turns; roles must alternate")
    dialogue = turns[1:] if turns[0].role == "system" else turns
    if not dialogue:
        raise ValueError(f"{where}the conversation has only a system message")
    if dialogue[0].role != "user":
        raise ValueError(f"{where}the conversation must start with a human/user turn (after an optional system turn)")
    return turns


def _lit(text: str) -> str:
    """`text` as a Jinja string literal (JSON quoting is valid Jinja)."""
    return json.dumps(text)


# Jinja macro shared by every chat_template: chat-form content to text, as `_content_text` does.
_JINJA_CONTENT = (
    "{%- macro content_text(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- if part['type'] == 'image' -%}{{- " + _lit(IMAGE_PLACEHOLDER) + " -}}"
    "{%- else -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)


def _jinja_system(default: str) -> str:
    """Jinja that sets `system` (the first message's, else `default`) and `loop_messages`."""
    return (
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set system = content_text(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{%- set system = " + _lit(default) + " -%}{%- set loop_messages = messages -%}{%- endif -%}"
    )


class ConversationTemplate(ABC):
    """A prompt format. Subclasses list the pieces of text and say which carry labels."""

    name: str
    stop_token: str | None = None

    def render(
        self, conversation: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, sample_id: Any = None
    ) -> RenderedConversation:
        """Text of `conversation` and the spans of its answers (+ end token) that carry labels."""
        turns = normalize_conversation(conversation, sample_id)
        if add_generation_prompt and turns[-1].role != "user":
            raise ValueError(
                f"{_where(sample_id)}add_generation_prompt needs a conversation that ends with a user turn"
            )
        system = turns[0].text if turns[0].role == "system" else None
        dialogue = turns[1:] if system is not None else turns
        text, spans = "", []
        for piece, labelled in self.pieces(system, dialogue, add_generation_prompt, sample_id):
            if labelled and piece:
                if spans and spans[-1][1] == len(text):
                    spans[-1] = (spans[-1][0], len(text) + len(piece))
                else:
                    spans.append((len(text), len(text) + len(piece)))
            text += piece
        return RenderedConversation(text=text, answer_spans=spans)

    @abstractmethod
    def pieces(
        self, system: str | None, dialogue: list[Turn], add_generation_prompt: bool, sample_id: Any
    ) -> list[tuple[str, bool]]:
        """(text, carries_labels) pieces in order."""

    @property
    @abstractmethod
    def chat_template(self) -> str:
        """The same format as a Jinja chat template over chat-form messages."""


# Exact keys (aliases included) -> template instance. Add one with `@register_template("name", ...)`.
TEMPLATES: dict[str, ConversationTemplate] = {}


def register_template(*names: str) -> Callable[[type[ConversationTemplate]], type[ConversationTemplate]]:
    """Class decorator: register one instance of the template under each exact key in `names`."""

    def decorator(cls: type[ConversationTemplate]) -> type[ConversationTemplate]:
        instance = cls()
        for name in names:
            if name in TEMPLATES:
                raise ValueError(f"conversation template {name!r} is already registered")
            TEMPLATES[name] = instance
        return cls

    return decorator


@register_template("plain")
class PlainTemplate(ConversationTemplate):
    """LLaVA stage-1 alignment: `<image>` placeholders, then the caption and "\\n" (labelled)."""

    name = "plain"

    def pieces(self, system, dialogue, add_generation_prompt, sample_id):
        if system is not None:
            raise ValueError(f"{_where(sample_id)}the plain template has no system prompt; drop the system message")
        pieces = []
        for turn in dialogue:
            if turn.role == "user":
                pieces.append((IMAGE_PLACEHOLDER * turn.text.count(IMAGE_PLACEHOLDER), False))
            else:
                pieces.append((turn.text + "\n", True))
        return pieces

    @property
    def chat_template(self) -> str:
        return (
            _JINJA_CONTENT + "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}"
            "{{- " + _lit(IMAGE_PLACEHOLDER) + " * content_text(message['content'])"
            ".count(" + _lit(IMAGE_PLACEHOLDER) + ") -}}"
            "{%- elif message['role'] == 'assistant' -%}"
            "{%- generation -%}{{- content_text(message['content']) + '\\n' -}}{%- endgeneration -%}"
            "{%- endif -%}{%- endfor -%}"
        )


@register_template("vicuna_v1", "llava_v1")
class VicunaTemplate(ConversationTemplate):
    """LLaVA v1 / Vicuna: `SYSTEM USER: q ASSISTANT: a</s>USER: ...`; generation prompt `ASSISTANT:`."""

    name = "vicuna_v1"
    stop_token = "</s>"
    system = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )

    def pieces(self, system, dialogue, add_generation_prompt, sample_id):
        pieces = [((self.system if system is None else system) + " ", False)]
        for turn in dialogue:
            if turn.role == "user":
                pieces.append(("USER: " + turn.text + " ", False))
            else:
                pieces += [("ASSISTANT: ", False), (turn.text + "</s>", True)]
        if add_generation_prompt:
            pieces.append(("ASSISTANT:", False))
        return pieces

    @property
    def chat_template(self) -> str:
        return (
            _JINJA_CONTENT + _jinja_system(self.system) + "{{- system + ' ' -}}"
            "{%- for message in loop_messages -%}"
            "{%- if message['role'] == 'user' -%}{{- 'USER: ' + content_text(message['content']) + ' ' -}}"
            "{%- else -%}{{- 'ASSISTANT: ' -}}"
            "{%- generation -%}{{- content_text(message['content']) + '</s>' -}}{%- endgeneration -%}"
            "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
        )


@register_template("chatml", "qwen")
class ChatMLTemplate(ConversationTemplate):
    """ChatML (Qwen, LLaVA-OneVision): `<|im_start|>role\\n...<|im_end|>\\n`; labels on answer + `<|im_end|>`."""

    name = "chatml"
    stop_token = "<|im_end|>"
    system = "You are a helpful assistant."

    def pieces(self, system, dialogue, add_generation_prompt, sample_id):
        system = self.system if system is None else system
        pieces = [(f"<|im_start|>system\n{system}<|im_end|>\n", False)]
        for turn in dialogue:
            if turn.role == "user":
                pieces.append((f"<|im_start|>user\n{turn.text}<|im_end|>\n", False))
            else:
                pieces += [("<|im_start|>assistant\n", False), (turn.text + "<|im_end|>", True), ("\n", False)]
        if add_generation_prompt:
            pieces.append(("<|im_start|>assistant\n", False))
        return pieces

    @property
    def chat_template(self) -> str:
        return (
            _JINJA_CONTENT + _jinja_system(self.system) + "{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' -}}"
            "{%- for message in loop_messages -%}"
            "{%- if message['role'] == 'user' -%}"
            "{{- '<|im_start|>user\\n' + content_text(message['content']) + '<|im_end|>\\n' -}}"
            "{%- else -%}{{- '<|im_start|>assistant\\n' -}}"
            "{%- generation -%}{{- content_text(message['content']) + '<|im_end|>' -}}{%- endgeneration -%}"
            "{{- '\\n' -}}{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
        )


@register_template("llama3")
class Llama3Template(ConversationTemplate):
    """Llama-3 (LLaVA-NeXT llama3): header blocks ending in `<|eot_id|>`; the tokenizer adds BOS."""

    name = "llama3"
    stop_token = "<|eot_id|>"
    system = (
        "You are a helpful language and vision assistant. You are able to understand the visual content "
        "that the user provides, and assist the user with a variety of tasks using natural language."
    )

    @staticmethod
    def _header(role: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    def pieces(self, system, dialogue, add_generation_prompt, sample_id):
        system = self.system if system is None else system
        pieces = [(self._header("system") + system + "<|eot_id|>", False)]
        for turn in dialogue:
            if turn.role == "user":
                pieces.append((self._header("user") + turn.text + "<|eot_id|>", False))
            else:
                pieces += [(self._header("assistant"), False), (turn.text + "<|eot_id|>", True)]
        if add_generation_prompt:
            pieces.append((self._header("assistant"), False))
        return pieces

    @property
    def chat_template(self) -> str:
        header = "'<|start_header_id|>' + {} + '<|end_header_id|>\\n\\n'"
        return (
            _JINJA_CONTENT
            + _jinja_system(self.system)
            + "{{- "
            + header.format("'system'")
            + " + system + '<|eot_id|>' -}}"
            "{%- for message in loop_messages -%}"
            "{%- if message['role'] == 'user' -%}"
            "{{- " + header.format("'user'") + " + content_text(message['content']) + '<|eot_id|>' -}}"
            "{%- else -%}{{- " + header.format("'assistant'") + " -}}"
            "{%- generation -%}{{- content_text(message['content']) + '<|eot_id|>' -}}{%- endgeneration -%}"
            "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- " + header.format("'assistant'") + " -}}{%- endif -%}"
        )


def get_template(name: str) -> ConversationTemplate:
    """The template registered under exactly `name`."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None
