"""Conversation templates: exact prompt strings, answer spans, transformers parity, validation."""

from __future__ import annotations

import pytest
from jinja2.exceptions import TemplateError
from PIL import Image

from llavakit.processing.processor import IGNORE_INDEX, LlavaKitProcessor
from llavakit.processing.templates import (
    TEMPLATES,
    ConversationTemplate,
    get_template,
    normalize_conversation,
    register_template,
)
from llavakit.tiny import tiny_llava_config

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
# The original LLaVA's conv_llava_v1 (llava/conversation.py): "human", where vicuna_v1 says "user".
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# conv_llava_llama_2's system prompt (the same words as LLaVA-NeXT's llama3 one).
LLAVA_LLAMA_2_SYSTEM = LLAMA3_SYSTEM

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
    # The original code's formats, written from the Conversation definitions in llava/conversation.py.
    "llava_v1": (
        f"{LLAVA_V1_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A red circle.</s>"
        "USER: Which color? ASSISTANT: Red.</s>"
    ),
    "qwen_1_5": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>\n"
        "<|im_start|>user\nWhich color?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n"
    ),
    "mistral_instruct": "[INST] <image>\nWhat is it? [/INST] A red circle. </s>[INST] Which color? [/INST] Red. </s>",
    "chatml_direct": (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\nA red circle.<|im_end|>"
        "<|im_start|>user\nWhich color?<|im_end|><|im_start|>assistant\nRed.<|im_end|>"
    ),
    "llava_llama_2": (
        f"[INST] <<SYS>>\n{LLAVA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A red circle. </s>"
        "<s>[INST] Which color? [/INST] Red. </s>"
    ),
    "gemma_instruct": (
        "<start_of_turn>user\n<image>\nWhat is it?<end_of_turn>\n<start_of_turn>model\nA red circle.<end_of_turn>\n"
        "<start_of_turn>user\nWhich color?<end_of_turn>\n<start_of_turn>model\nRed.<end_of_turn>\n"
    ),
}
# What ends an answer and is labelled with it (the original's preprocess functions put the loss there).
END = {
    "vicuna_v1": "</s>",
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "llava_v1": "</s>",
    "qwen_1_5": "<|im_end|>",
    "mistral_instruct": " </s>",
    "chatml_direct": "<|im_end|>",
    "llava_llama_2": " </s>",
    "gemma_instruct": "<end_of_turn>\n",
}
# The space after `ASSISTANT:` / `[/INST]` is labelled: the generation prompt stops before it, so the model writes it.
LEAD = {"vicuna_v1": " ", "llava_v1": " ", "mistral_instruct": " ", "llava_llama_2": " "}
EXPECTED_SPANS = {
    "plain": ["A red circle.\nRed.\n"],  # adjacent answers (the 2nd turn has no image) form one span
    **{name: [LEAD.get(name, "") + answer + end for answer in ("A red circle.", "Red.")] for name, end in END.items()},
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
    # The original's llava_v1 has its own system prompt ("curious human"); its v1 is vicuna_v1.
    assert TEMPLATES["llava_v1"] is not TEMPLATES["vicuna_v1"]
    assert TEMPLATES["v1"] is TEMPLATES["vicuna_v1"]
    assert TEMPLATES["qwen"] is TEMPLATES["chatml"]
    # Keys that the original code maps to one Conversation share one template.
    assert TEMPLATES["qwen_2"] is TEMPLATES["qwen_1_5"]
    assert TEMPLATES["llava_mistral_instruct"] is TEMPLATES["mistral_instruct"]
    assert TEMPLATES["mistral_direct"] is TEMPLATES["chatml_direct"]
    assert set(TEMPLATES) >= {"plain", "vicuna_v1", "llava_v1", "chatml", "qwen", "llama3"}
    assert set(TEMPLATES) >= {"qwen_1_5", "qwen_2", "mistral_instruct", "chatml_direct", "llava_llama_2"}
    assert "gemma_instruct" in TEMPLATES
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


# plain and gemma_instruct have no system prompt (render rejects one), so those pairs are left out.
JINJA_PAIRS = [
    (name, case)
    for name in sorted(EXPECTED_TEXT)
    for case in sorted(JINJA_CASES)
    if not (case == "system" and get_template(name).system is None)
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
    for name, end in END.items():
        rendered = get_template(name).render(conversation)
        assert [rendered.text[start:stop] for start, stop in rendered.answer_spans] == [
            LEAD.get(name, "") + a + end for a in answers
        ]
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
    # The original's GEMMA style never writes a system prompt: refused here rather than dropped.
    with pytest.raises(ValueError, match="gemma_instruct template has no system prompt"):
        get_template("gemma_instruct").render([{"from": "system", "value": "s"}] + LLAVA_FORM[:2], sample_id=7)
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


# ---- the original code's formats: three rounds, custom / default / empty system, generation prompts ----

THREE_ROUNDS = LLAVA_FORM + [{"from": "human", "value": "How many?"}, {"from": "gpt", "value": "One."}]
BE_BRIEF = [{"from": "system", "value": "Be brief."}]

# Three rounds under the system message "Be brief.", as the original renders them with `conv.system`
# set to it (for the MPT / CHATML styles, whose `system` holds the header: "<|im_start|>system\nBe brief.").
ORIGINAL_CUSTOM_SYSTEM = {
    "llava_v1": (
        "Be brief. USER: <image>\nWhat is it? ASSISTANT: A red circle.</s>USER: Which color? ASSISTANT: Red.</s>"
        "USER: How many? ASSISTANT: One.</s>"
    ),
    "qwen_1_5": (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>\n"
        "<|im_start|>user\nWhich color?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n"
        "<|im_start|>user\nHow many?<|im_end|>\n<|im_start|>assistant\nOne.<|im_end|>\n"
    ),
    "mistral_instruct": (
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A red circle. </s>"
        "[INST] Which color? [/INST] Red. </s>[INST] How many? [/INST] One. </s>"
    ),
    "chatml_direct": (
        "<|im_start|>system\nBe brief.<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\nA red circle.<|im_end|>"
        "<|im_start|>user\nWhich color?<|im_end|><|im_start|>assistant\nRed.<|im_end|>"
        "<|im_start|>user\nHow many?<|im_end|><|im_start|>assistant\nOne.<|im_end|>"
    ),
    "llava_llama_2": (
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A red circle. </s>"
        "<s>[INST] Which color? [/INST] Red. </s><s>[INST] How many? [/INST] One. </s>"
    ),
}

# Two rounds and a third question with the default system, then the original's generation prompt (its
# `append_message(roles[1], None)`): the assistant's role, or nothing after LLAMA_2's `[/INST]`.
ORIGINAL_GENERATION_PROMPT = {
    "llava_v1": (
        f"{LLAVA_V1_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A red circle.</s>"
        "USER: Which color? ASSISTANT: Red.</s>USER: How many? ASSISTANT:"
    ),
    "qwen_1_5": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>\n"
        "<|im_start|>user\nWhich color?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n"
        "<|im_start|>user\nHow many?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "mistral_instruct": (
        "[INST] <image>\nWhat is it? [/INST] A red circle. </s>[INST] Which color? [/INST] Red. </s>"
        "[INST] How many? [/INST]"
    ),
    "chatml_direct": (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\nA red circle.<|im_end|>"
        "<|im_start|>user\nWhich color?<|im_end|><|im_start|>assistant\nRed.<|im_end|>"
        "<|im_start|>user\nHow many?<|im_end|><|im_start|>assistant\n"
    ),
    "llava_llama_2": (
        f"[INST] <<SYS>>\n{LLAVA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A red circle. </s>"
        "<s>[INST] Which color? [/INST] Red. </s><s>[INST] How many? [/INST]"
    ),
    "gemma_instruct": (
        "<start_of_turn>user\n<image>\nWhat is it?<end_of_turn>\n<start_of_turn>model\nA red circle.<end_of_turn>\n"
        "<start_of_turn>user\nWhich color?<end_of_turn>\n<start_of_turn>model\nRed.<end_of_turn>\n"
        "<start_of_turn>user\nHow many?<end_of_turn>\n<start_of_turn>model\n"
    ),
}

# An empty system: CHATML and LLAMA_2 styles then write no system block at all.
ORIGINAL_EMPTY_SYSTEM = {
    "qwen_1_5": "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>\n",
    "mistral_instruct": "[INST] <image>\nWhat is it? [/INST] A red circle. </s>",
    "llava_llama_2": "[INST] <image>\nWhat is it? [/INST] A red circle. </s>",
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_CUSTOM_SYSTEM))
def test_original_formats_three_rounds_with_a_custom_system(name):
    rendered = get_template(name).render(BE_BRIEF + THREE_ROUNDS)
    assert rendered.text == ORIGINAL_CUSTOM_SYSTEM[name]
    spans = [rendered.text[start:end] for start, end in rendered.answer_spans]
    assert spans == [LEAD.get(name, "") + answer + END[name] for answer in ("A red circle.", "Red.", "One.")]


def test_gemma_three_rounds_by_hand():
    """The GEMMA style has no system prompt; its three rounds, labelled on answer + `<end_of_turn>\\n`."""
    rendered = get_template("gemma_instruct").render(THREE_ROUNDS)
    assert rendered.text == ORIGINAL_GENERATION_PROMPT["gemma_instruct"] + "One.<end_of_turn>\n"
    spans = [rendered.text[start:end] for start, end in rendered.answer_spans]
    assert spans == ["A red circle.<end_of_turn>\n", "Red.<end_of_turn>\n", "One.<end_of_turn>\n"]


@pytest.mark.parametrize("name", sorted(ORIGINAL_GENERATION_PROMPT))
@pytest.mark.parametrize("conversation", [THREE_ROUNDS[:5], CHAT_FORM + [{"role": "user", "content": "How many?"}]])
def test_original_formats_generation_prompt(tiny_tokenizer, name, conversation):
    template = get_template(name)
    rendered = template.render(conversation, add_generation_prompt=True)
    assert rendered.text == ORIGINAL_GENERATION_PROMPT[name]
    assert [rendered.text[start:end] for start, end in rendered.answer_spans] == EXPECTED_SPANS[name]
    messages = [{"role": turn.role, "content": turn.text} for turn in normalize_conversation(conversation)]
    exported = tiny_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, chat_template=template.chat_template
    )
    assert exported == ORIGINAL_GENERATION_PROMPT[name]


@pytest.mark.parametrize("name", sorted(ORIGINAL_EMPTY_SYSTEM))
def test_original_formats_with_an_empty_system(name):
    rendered = get_template(name).render([{"from": "system", "value": ""}] + LLAVA_FORM[:2])
    assert rendered.text == ORIGINAL_EMPTY_SYSTEM[name]


def labelled_runs(tokenizer, sample: dict) -> list[str]:
    """The labelled tokens, decoded one contiguous run at a time."""
    runs, current = [], []
    for token, label in zip(sample["input_ids"].tolist(), sample["labels"].tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


@pytest.mark.parametrize("name", sorted(ORIGINAL_GENERATION_PROMPT))
def test_original_formats_label_exactly_the_answers_tokens(tiny_tokenizer, name):
    """Token labels cover each answer and its end, and agree with transformers' assistant mask."""
    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, name)
    sample = processor.encode_conversation(THREE_ROUNDS, images=[Image.new("RGB", (20, 30), (200, 10, 10))])
    # A word token may carry the space before the answer ("[/INST] A", "ASSISTANT: A"); nothing more is labelled.
    runs = [run.removeprefix(" ") for run in labelled_runs(tiny_tokenizer, sample)]
    assert runs == [answer + END[name] for answer in ("A red circle.", "Red.", "One.")]
    text_only = [
        {"role": turn.role, "content": turn.text.replace("<image>\n", "")}
        for turn in normalize_conversation(THREE_ROUNDS)
    ]
    sample = processor.encode_conversation(text_only)
    exported = tiny_tokenizer.apply_chat_template(
        text_only, chat_template=get_template(name).chat_template, return_dict=True, return_assistant_tokens_mask=True
    )
    # transformers' tokenizer chat path adds no BOS; ours does: compare after it.
    assert sample["input_ids"][1:].tolist() == exported["input_ids"]
    assert (sample["labels"][1:] != IGNORE_INDEX).long().tolist() == exported["assistant_masks"]
