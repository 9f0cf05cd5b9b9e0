"""Conversation templates: a conversation becomes one prompt string plus the spans that carry loss.

LLaVA-family models are tuned with one fixed prompt format; training, evaluation and serving
must render it identically or quality quietly drops. Each template is written once, as a Jinja
chat template (`chat_template`), with every answer's labelled text in a `{% generation %}` block:

* `render(conversation)` runs that Jinja through transformers' renderer, which records the
  character spans of the generation blocks: the text and the spans of every assistant answer
  (with its end token / separator), on whose tokens the processor puts labels;
* a processor exported to transformers (and vLLM / SGLang behind it) carries the same Jinja,
  so it formats prompts identically, and transformers' `return_assistant_tokens_mask` agrees;
* `stop_token` is what ends an answer at generation time.

Where the generation prompt stops before the space that leads an answer (`ASSISTANT:`, `[/INST]`),
that space is inside the generation block: the model must write it at inference, so it carries a
label. With a tokenizer that makes the space its own token (a byte-level BPE before a word it
never saw with a leading space, e.g. "BOX"), leaving it out would never teach the model to start
such an answer.

No template writes a leading BOS: the tokenizer adds its own (`<s>` for Llama-2/Vicuna/Mistral,
`<bos>` for Gemma, `<|begin_of_text|>` for Llama-3), as transformers' `LlavaProcessor` does when
it tokenizes, and as the original LLaVA code did (its prompts carry no leading BOS either;
`llava_llama_2` writes the `<s>` that leads each later round, as the original does).

Conversations come in LLaVA form (`[{"from": "human" | "gpt" | "system", "value": str}]`)
or chat form (`[{"role": "user" | "assistant" | "system", "content": str | [parts]}]`,
parts `{"type": "image"}` or `{"type": "text", "text": ...}`, joined by "\\n"). Both are
normalised to one list of `Turn`s first.

Keys are exact: `plain`, `vicuna_v1` (alias `v1`), `chatml` (alias `qwen`), `llama3`, and the
formats of the original LLaVA / LLaVA-NeXT checkpoints under the original code's names
(`llava/conversation.py` of haotian-liu/LLaVA and LLaVA-VL/LLaVA-NeXT): `llava_v1`, `qwen_1_5`
(alias `qwen_2`), `mistral_instruct` (alias `llava_mistral_instruct`), `chatml_direct` (alias
`mistral_direct`), `llava_llama_2`, `gemma_instruct`. They render the text the original's
`Conversation.get_prompt()` renders for the same turns, with one chosen difference: `<image>` stays
where the conversation puts it. (The original's data preprocessing and demo move `<image>` to the
front of its message as `<image>\\n`, LLaVA-NeXT's only for a lone one; the released LLaVA data
mostly has it there already, and those samples render identically.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

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


def _literal(text: str) -> str:
    """`text` as a Jinja string literal (JSON quoting is valid Jinja)."""
    return json.dumps(text)


# Chat-form content to text, as `_content_text` does (transformers users pass chat-form messages);
# IMAGE stands for the placeholder's literal.
_CONTENT_MACRO = (
    r"""{%- macro content_text(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {%- for part in content -%}
            {%- if not loop.first -%}{{- '\n' -}}{%- endif -%}
            {%- if part['type'] == 'image' -%}{{- IMAGE -}}{%- else -%}{{- part['text'] -}}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
"""
).replace("IMAGE", _literal(IMAGE_PLACEHOLDER))


def _system_prelude(name: str, default_system: str | None) -> str:
    """Jinja that sets `system` (the first message's, else the default) and `loop_messages`.

    A template without a system prompt refuses a system message instead of dropping it.
    """
    if default_system is None:
        refusal = _literal(f"the {name} template has no system prompt; drop the system message")
        return (
            "{%- if messages[0]['role'] == 'system' -%}{{- raise_exception(" + refusal + ") -}}{%- endif -%}\n"
            "{%- set loop_messages = messages -%}\n"
        )
    return (
        "{%- if messages[0]['role'] == 'system' -%}\n"
        "    {%- set system = content_text(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}\n"
        "{%- else -%}\n"
        "    {%- set system = " + _literal(default_system) + " -%}{%- set loop_messages = messages -%}\n"
        "{%- endif -%}\n"
    )


def _merged(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Non-empty spans, adjacent ones joined (answers with nothing between them label as one run)."""
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if end <= start:
            continue
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


class ConversationTemplate:
    """A prompt format, written once as Jinja.

    Subclasses set `name`, `system` (the default system prompt, None when the format has
    none), `stop_token` and `body`: the Jinja over `loop_messages` (and `system`), with each
    answer's labelled text inside a `{% generation %}` block; the macro `content_text(content)`
    turns chat-form content into text. `chat_template` is the whole Jinja template; `render`
    runs it through transformers' renderer, which records the generation blocks' character
    spans, so labels and exported prompts cannot disagree. Keep generation blocks outside
    macros and `{% set %}` blocks: the renderer measures a span from the text emitted so far.
    """

    name: str
    system: str | None = None
    stop_token: str | None = None
    body: str

    @property
    def chat_template(self) -> str:
        """The format as a Jinja chat template over chat-form messages (what exported tokenizers carry)."""
        return _CONTENT_MACRO + _system_prelude(self.name, self.system) + self.body

    def render(
        self, conversation: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, sample_id: Any = None
    ) -> RenderedConversation:
        """Text of `conversation` and the spans of its answers (+ end token) that carry labels."""
        turns = normalize_conversation(conversation, sample_id)
        if add_generation_prompt and turns[-1].role != "user":
            raise ValueError(
                f"{_where(sample_id)}add_generation_prompt needs a conversation that ends with a user turn"
            )
        messages = [{"role": turn.role, "content": turn.text} for turn in turns]
        try:
            texts, spans = render_jinja_template(
                [messages],
                chat_template=self.chat_template,
                return_assistant_tokens_mask=True,
                add_generation_prompt=add_generation_prompt,
            )
        except TemplateError as error:
            raise ValueError(f"{_where(sample_id)}{error}") from error
        return RenderedConversation(text=texts[0], answer_spans=_merged(spans[0]))


# Exact keys (aliases included) -> template instance. Add one with `@register_template("name", ...)`.
TEMPLATES: dict[str, ConversationTemplate] = {}


def register_template(*names: str) -> Callable[[type[ConversationTemplate]], type[ConversationTemplate]]:
    """Class decorator: register one instance of the template under each exact key in `names`."""

    def decorator(cls: type[ConversationTemplate]) -> type[ConversationTemplate]:
        if not isinstance(getattr(cls, "body", None), str):
            raise TypeError(f"{cls.__name__} needs a Jinja `body` to be a conversation template")
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
    body = (
        r"""{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {{- IMAGE * content_text(message['content']).count(IMAGE) -}}
    {%- else -%}
        {%- generation -%}{{- content_text(message['content']) + '\n' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
"""
    ).replace("IMAGE", _literal(IMAGE_PLACEHOLDER))


@register_template("vicuna_v1", "v1")
class VicunaTemplate(ConversationTemplate):
    """Vicuna v1 (the original's `v1`, LLaVA-1.5's format): `SYSTEM USER: q ASSISTANT: a</s>USER: ...`."""

    name = "vicuna_v1"
    stop_token = "</s>"
    system = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    body = r"""{{- system + ' ' -}}
{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {{- 'USER: ' + content_text(message['content']) + ' ' -}}
    {%- else -%}
        {{- 'ASSISTANT:' -}}
        {%- generation -%}{{- ' ' + content_text(message['content']) + '</s>' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}
"""


# ChatML turns after the system block: `<|im_start|>role\n...<|im_end|>\n`; labels on answer + `<|im_end|>`.
_CHATML_TURNS = r"""{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {{- '<|im_start|>user\n' + content_text(message['content']) + '<|im_end|>\n' -}}
    {%- else -%}
        {{- '<|im_start|>assistant\n' -}}
        {%- generation -%}{{- content_text(message['content']) + '<|im_end|>' -}}{%- endgeneration -%}
        {{- '\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""


@register_template("chatml", "qwen")
class ChatMLTemplate(ConversationTemplate):
    """ChatML (Qwen, LLaVA-OneVision): `<|im_start|>role\\n...<|im_end|>\\n`; labels on answer + `<|im_end|>`."""

    name = "chatml"
    stop_token = "<|im_end|>"
    system = "You are a helpful assistant."
    body = (
        r"""{{- '<|im_start|>system\n' + system + '<|im_end|>\n' -}}
"""
        + _CHATML_TURNS
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
    body = r"""{{- '<|start_header_id|>system<|end_header_id|>\n\n' + system + '<|eot_id|>' -}}
{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {{- '<|start_header_id|>user<|end_header_id|>\n\n' + content_text(message['content']) + '<|eot_id|>' -}}
    {%- else -%}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {%- generation -%}{{- content_text(message['content']) + '<|eot_id|>' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}
"""


# ---- the original LLaVA / LLaVA-NeXT formats (llava/conversation.py), under the original's names ----


@register_template("llava_v1")
class LlavaV1Template(VicunaTemplate):
    """Original `conv_llava_v1`: Vicuna's format (sep style TWO: " ", "</s>") with a "curious human" system.

    Labels on answer + `</s>`, as the original's `preprocess_v1`. LLaVA-1.5 trained with `v1`
    (`vicuna_v1`, "curious user"); this key is the original's `llava_v1`, a different prompt.
    """

    name = "llava_v1"
    system = (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    )


@register_template("qwen_1_5", "qwen_2")
class QwenOneVisionTemplate(ConversationTemplate):
    """LLaVA-OneVision's `conv_qwen` (sep style CHATML): `chatml`'s text, no system block for an empty system.

    Labels on answer + `<|im_end|>`. (The original's `preprocess_qwen` also labels every turn's
    `<|im_start|>`, `<|im_end|>` and newline tokens and the assistant's role header; llavakit
    labels only what the model must learn to answer.) Qwen tokenizers add no BOS.
    """

    name = "qwen_1_5"
    stop_token = "<|im_end|>"
    system = "You are a helpful assistant."
    body = (
        r"""{%- if system -%}{{- '<|im_start|>system\n' + system + '<|im_end|>\n' -}}{%- endif -%}
"""
        + _CHATML_TURNS
    )


def _llama_2_body(turn_sep: str) -> str:
    """Sep style LLAMA_2: `[INST] q [/INST] a </s>`, rounds after the first led by `turn_sep`.

    A non-empty system sits in a `<<SYS>>` block at the start of the first instruction. The
    generation prompt adds nothing: a question's text already ends in `[/INST]`, as in the original.
    Labels on ` a </s>`: the answer, the spaces around it and `</s>` (the original's `preprocess_llama_2` labels
    `a </s>`; the leading space is labelled too, as the model writes it after `[/INST]`).
    """
    return (
        r"""{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {{- ('' if loop.first else TURN_SEP) + '[INST] ' -}}
        {%- if loop.first and system -%}{{- '<<SYS>>\n' + system + '\n<</SYS>>\n\n' -}}{%- endif -%}
        {{- content_text(message['content']) + ' [/INST]' -}}
    {%- else -%}
        {%- generation -%}{{- ' ' + content_text(message['content']) + ' </s>' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
"""
    ).replace("TURN_SEP", _literal(turn_sep))


@register_template("llava_llama_2")
class LlavaLlama2Template(ConversationTemplate):
    """Original `conv_llava_llama_2` (sep style LLAMA_2, sep `<s>`): Llama-2 chat with a `<<SYS>>` block.

    `[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\nq [/INST] a </s><s>[INST] q2 [/INST]`. The original
    strips the leading `<s>` (the tokenizer adds BOS) and keeps the `<s>` before each later round;
    so does this template.
    """

    name = "llava_llama_2"
    stop_token = "</s>"
    system = (
        "You are a helpful language and vision assistant. You are able to understand the visual content "
        "that the user provides, and assist the user with a variety of tasks using natural language."
    )
    body = _llama_2_body("<s>")


@register_template("mistral_instruct", "llava_mistral_instruct")
class MistralInstructTemplate(ConversationTemplate):
    """Original `conv_mistral_instruct` (LLaVA-NeXT Mistral; LLAMA_2, empty sep): `[INST] q [/INST] a </s>[INST] ...`.

    The default system is empty (no `<<SYS>>` block); a system message adds one, as setting the
    original's `system` does. The text carries no `<s>`: the tokenizer adds BOS.
    """

    name = "mistral_instruct"
    stop_token = "</s>"
    system = ""
    body = _llama_2_body("")


@register_template("chatml_direct", "mistral_direct")
class ChatMLDirectTemplate(ConversationTemplate):
    """Original `conv_chatml_direct` (LLaVA-NeXT 34B; sep style MPT): ChatML without newlines between turns.

    `<|im_start|>system\\nAnswer the questions.<|im_end|><|im_start|>user\\nq<|im_end|><|im_start|>assistant\\n`;
    a system message replaces the prompt after `<|im_start|>system\\n`. Labels on answer +
    `<|im_end|>`, as the original's `preprocess_mpt`. The text carries no BOS.
    """

    name = "chatml_direct"
    stop_token = "<|im_end|>"
    system = "Answer the questions."
    body = r"""{{- '<|im_start|>system\n' + system + '<|im_end|>' -}}
{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {{- '<|im_start|>user\n' + content_text(message['content']) + '<|im_end|>' -}}
    {%- else -%}
        {{- '<|im_start|>assistant\n' -}}
        {%- generation -%}{{- content_text(message['content']) + '<|im_end|>' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""


@register_template("gemma_instruct")
class GemmaInstructTemplate(ConversationTemplate):
    """Original `conv_gemma_instruct` (sep style GEMMA): Gemma's turns, `model` for the assistant.

    `<start_of_turn>user\\nq<end_of_turn>\\n<start_of_turn>model\\na<end_of_turn>\\n`. No system prompt:
    the original never writes one, so a system message is refused rather than dropped. Labels on
    answer + `<end_of_turn>\\n`, as the original's `preprocess_gemma`. The text carries no `<bos>`:
    the Gemma tokenizer adds it.
    """

    name = "gemma_instruct"
    stop_token = "<end_of_turn>"
    body = r"""{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {{- '<start_of_turn>user\n' + content_text(message['content']) + '<end_of_turn>\n' -}}
    {%- else -%}
        {{- '<start_of_turn>model\n' -}}
        {%- generation -%}{{- content_text(message['content']) + '<end_of_turn>\n' -}}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
"""


def get_template(name: str) -> ConversationTemplate:
    """The template registered under exactly `name`."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None
