"""Conversation templates: exact prompt strings, answer spans, transformers parity, validation."""

from __future__ import annotations

import pytest
from jinja2.exceptions import TemplateError

from llavakit.processing.templates import (
    TEMPLATES,
    ConversationTemplate,
    get_template,
    normalize_conversation,
    register_template,
)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

LLAVA_FORM = [
    {"from": "human", "value": "<image>\nWhat is it?"},
    {"from": "gpt", "value": "A red circle."},
    {"from": "human", "value": "Which color?"},
    {"from": "gpt", "value": "Red."},
]
CHAT_FORM = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
    {"role": "assistant", "content": "A red circle."},
    {"role": "user", "content": [{"type": "text", "text": "Which color?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
]

EXPECTED_TEXT = {
    "plain": "<image>A red circle.\nRed.\n",
    "vicuna_v1": (
        f"{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A red circle.</s>USER: Which color? ASSISTANT: Red.</s>"
    ),
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>\n"
        "<|im_start|>user\nWhich color?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n"
    ),
    "llama3": (
        f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red circle.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhich color?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nRed.<|eot_id|>"
    ),
}
EXPECTED_SPANS = {
    "plain": ["A red circle.\nRed.\n"],  # adjacent answers (the 2nd turn has no image) form one span
    "vicuna_v1": ["A red circle.</s>", "Red.</s>"],
    "chatml": ["A red circle.<|im_end|>", "Red.<|im_end|>"],
    "llama3": ["A red circle.<|eot_id|>", "Red.<|eot_id|>"],
}
GENERATION_SUFFIX = {"plain": "", "vicuna_v1": "ASSISTANT:", "chatml": "<|im_start|>assistant\n"}


@pytest.mark.parametrize("name", sorted(EXPECTED_TEXT))
@pytest.mark.parametrize("conversation", [LLAVA_FORM, CHAT_FORM], ids=["llava_form", "chat_form"])
def test_render_exact_text_and_spans(name, conversation):
    rendered = get_template(name).render(conversation)
    assert rendered.text == EXPECTED_TEXT[name]
    assert [rendered.text[start:end] for start, end in rendered.answer_spans] == EXPECTED_SPANS[name]


@pytest.mark.parametrize("name", ["plain", "vicuna_v1", "chatml"])
def test_generation_prompt_is_appended_after_a_user_turn(name):
    template = get_template(name)
    without = template.render(LLAVA_FORM[:3]).text
    with_prompt = template.render(LLAVA_FORM[:3], add_generation_prompt=True)
    assert with_prompt.text == without + GENERATION_SUFFIX[name]
    assert len(with_prompt.answer_spans) == 1
    llama3 = get_template("llama3").render(LLAVA_FORM[:1], add_generation_prompt=True).text
    assert llama3.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_system_turn_replaces_the_default_prompt():
    conversation = [{"from": "system", "value": "Be brief."}] + LLAVA_FORM[:2]
    assert get_template("vicuna_v1").render(conversation).text.startswith("Be brief. USER: <image>\n")
    assert get_template("chatml").render(conversation).text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_aliases_and_registry():
    assert TEMPLATES["llava_v1"] is TEMPLATES["vicuna_v1"]
    assert TEMPLATES["qwen"] is TEMPLATES["chatml"]
    assert set(TEMPLATES) >= {"plain", "vicuna_v1", "llava_v1", "chatml", "qwen", "llama3"}
    with pytest.raises(ValueError, match="unknown conversation template 'vicuna'"):
        get_template("vicuna")  # exact keys only, no prefix matching
    with pytest.raises(ValueError, match="already registered"):
        register_template("plain")(type(TEMPLATES["plain"]))


JINJA_CASES = {
    "one_round": CHAT_FORM[:2],
    "two_rounds": CHAT_FORM,
    "system": [{"role": "system", "content": "Be brief."}] + CHAT_FORM,
    "two_images": [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]},
        {"role": "assistant", "content": "No."},
    ],
    "string_content_with_placeholder": [
        {"role": "user", "content": '<image>\nDescribe it, don\'t "guess".'},
        {"role": "assistant", "content": "A line\nand a dot."},
    ],
}


# plain has no system prompt (render rejects one), so that pair is left out.
JINJA_PAIRS = [
    (name, case)
    for name in sorted(EXPECTED_TEXT)
    for case in sorted(JINJA_CASES)
    if (name, case) != ("plain", "system")
]


@pytest.mark.parametrize("name,case", JINJA_PAIRS)
@pytest.mark.parametrize("generation", [False, True])
def test_transformers_apply_chat_template_matches_render(tiny_tokenizer, name, case, generation):
    """transformers reads chat-form content in the Jinja; render normalises it in Python first: same text."""
    messages = JINJA_CASES[case]
    if generation:
        messages = messages[:-1]
    template = get_template(name)
    jinja_text = tiny_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation, chat_template=template.chat_template
    )
    assert jinja_text == template.render(messages, add_generation_prompt=generation).text


# Generation prompts after chat-form content parts, written out by hand.
QUESTION_PROMPTS = {
    ("plain", "two_images"): "<image><image>",
    ("plain", "string_content_with_placeholder"): "<image>",
    ("vicuna_v1", "two_images"): f"{VICUNA_SYSTEM} USER: <image>\n<image>\nSame? ASSISTANT:",
    ("vicuna_v1", "string_content_with_placeholder"): (
        f'{VICUNA_SYSTEM} USER: <image>\nDescribe it, don\'t "guess". ASSISTANT:'
    ),
    ("chatml", "two_images"): (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\n<image>\nSame?<|im_end|>\n<|im_start|>assistant\n"
    ),
    ("chatml", "string_content_with_placeholder"): (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        '<|im_start|>user\n<image>\nDescribe it, don\'t "guess".<|im_end|>\n<|im_start|>assistant\n'
    ),
    ("llama3", "two_images"): (
        f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\n<image>\nSame?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    ("llama3", "string_content_with_placeholder"): (
        f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}<|eot_id|>"
        '<|start_header_id|>user<|end_header_id|>\n\n<image>\nDescribe it, don\'t "guess".<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}


@pytest.mark.parametrize("name,case", sorted(QUESTION_PROMPTS))
def test_generation_prompts_by_hand(tiny_tokenizer, name, case):
    messages = JINJA_CASES[case][:-1]
    template = get_template(name)
    assert template.render(messages, add_generation_prompt=True).text == QUESTION_PROMPTS[name, case]
    exported = tiny_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, chat_template=template.chat_template
    )
    assert exported == QUESTION_PROMPTS[name, case]


SYSTEM_CASE_TEXT = {
    "vicuna_v1": "Be brief. USER: <image>\nWhat is it? ASSISTANT: A red circle.</s>",
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\nA red circle.<|im_end|>\n"
    ),
    "llama3": (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red circle.<|eot_id|>"
    ),
}


@pytest.mark.parametrize("name", sorted(SYSTEM_CASE_TEXT))
def test_system_message_by_hand(name):
    conversation = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}] + CHAT_FORM[:2]
    rendered = get_template(name).render(conversation)
    assert rendered.text == SYSTEM_CASE_TEXT[name]
    assert [rendered.text[start:end] for start, end in rendered.answer_spans] == [EXPECTED_SPANS[name][0]]


def test_spans_are_char_exact_around_tricky_text():
    """Multi-byte characters, Jinja-like braces and end tokens inside answers do not shift the spans."""
    answers = ["Ünïcode ✓ {{ not jinja }} {% raw %}", "It says </s> and <|im_end|>\n, literally."]
    conversation = [
        {"from": "human", "value": "<image>\nRead it: {% if x %}?"},
        {"from": "gpt", "value": answers[0]},
        {"from": "human", "value": "Again, ünïcode?"},
        {"from": "gpt", "value": answers[1]},
    ]
    for name, end in (("vicuna_v1", "</s>"), ("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")):
        rendered = get_template(name).render(conversation)
        assert [rendered.text[start:stop] for start, stop in rendered.answer_spans] == [a + end for a in answers]
    plain = get_template("plain").render(conversation)
    assert plain.text == "<image>" + answers[0] + "\n" + answers[1] + "\n"
    assert plain.answer_spans == [(len("<image>"), len(plain.text))]


def test_a_template_is_its_jinja():
    """A new format needs only its Jinja body; render and the exported chat template follow from it."""

    class Terse(ConversationTemplate):
        name = "terse"
        body = (
            "{%- for message in loop_messages -%}{%- if message['role'] == 'user' -%}"
            "{{- 'Q: ' + content_text(message['content']) + '\\n' -}}{%- else -%}{{- 'A: ' -}}"
            "{%- generation -%}{{- content_text(message['content']) + '\\n' -}}{%- endgeneration -%}"
            "{%- endif -%}{%- endfor -%}"
        )

    rendered = Terse().render(LLAVA_FORM)
    assert rendered.text == "Q: <image>\nWhat is it?\nA: A red circle.\nQ: Which color?\nA: Red.\n"
    assert [rendered.text[start:end] for start, end in rendered.answer_spans] == ["A red circle.\n", "Red.\n"]


def test_normalisation_joins_parts_with_newlines():
    turns = normalize_conversation(JINJA_CASES["two_images"])
    assert [(t.role, t.text) for t in turns] == [("user", "<image>\n<image>\nSame?"), ("assistant", "No.")]


BAD_CONVERSATIONS = {
    "empty": ([], "is empty"),
    "unknown_llava_role": ([{"from": "bot", "value": "hi"}], "unknown role 'bot'"),
    "unknown_chat_role": ([{"role": "tool", "content": "x"}], "unknown role 'tool'"),
    "same_role_twice": (
        [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
        "messages 0 and 1 are both 'user'",
    ),
    "starts_with_answer": ([{"from": "gpt", "value": "a"}], "must start with a human/user turn"),
    "system_in_middle": (
        [{"from": "human", "value": "a"}, {"from": "system", "value": "b"}],
        "system message may only come first",
    ),
    "only_system": ([{"role": "system", "content": "s"}], "only a system message"),
    "bad_part": ([{"role": "user", "content": [{"type": "audio"}]}], "neither image nor text"),
    "not_a_list": ("hello", "must be a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONVERSATIONS))
def test_bad_conversations_name_the_sample(case):
    conversation, message = BAD_CONVERSATIONS[case]
    with pytest.raises(ValueError, match=message) as error:
        get_template("vicuna_v1").render(conversation, sample_id="coco-000042")
    assert "coco-000042" in str(error.value)


def test_template_specific_errors():
    with pytest.raises(ValueError, match="plain template has no system prompt"):
        get_template("plain").render([{"from": "system", "value": "s"}] + LLAVA_FORM[:2], sample_id=7)
    with pytest.raises(ValueError, match="ends with a user turn"):
        get_template("chatml").render(LLAVA_FORM[:2], add_generation_prompt=True)


def test_errors_raised_in_the_jinja_name_the_sample(tiny_tokenizer):
    """The plain format's refusal of a system prompt lives in its Jinja: render names the sample, and
    transformers users of an exported template get the same message instead of a silently dropped system."""
    conversation = [{"from": "system", "value": "s"}] + LLAVA_FORM[:2]
    with pytest.raises(ValueError, match=r"^sample 'coco-7': the plain template has no system prompt") as error:
        get_template("plain").render(conversation, sample_id="coco-7")
    assert isinstance(error.value.__cause__, TemplateError)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "<image>"}]
    with pytest.raises(TemplateError, match="plain template has no system prompt"):
        tiny_tokenizer.apply_chat_template(messages, tokenize=False, chat_template=get_template("plain").chat_template)
