"""The tiny tokenizer and LlavaKitProcessor: transformers parity, label masking, errors, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from llavakit.interop.processor_export import transformers_llava_processor
from llavakit.processing.images import ImageProcessingConfig
from llavakit.processing.processor import (
    IGNORE_INDEX,
    PROCESSOR_FILE,
    LlavaKitProcessor,
)
from llavakit.processing.templates import get_template
from llavakit.tiny import SPECIAL_TOKENS, build_tiny_tokenizer, tiny_llava_config

PATCH = 8  # tiny vision tower: 32 px images, 8 px patches -> 16 image tokens (CLIP, CLS dropped)


def make_processor(tokenizer, template="vicuna_v1", mode="pad", vision="clip") -> LlavaKitProcessor:
    config = tiny_llava_config(image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision=vision)
    return LlavaKitProcessor.from_model_config(tokenizer, config, template, image_aspect=mode)


def image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def labelled_runs(tokenizer, sample) -> list[str]:
    """The labelled tokens, decoded one contiguous run at a time."""
    runs, current = [], []
    for token, label in zip(sample["input_ids"].tolist(), sample["labels"].tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


# ---- tiny tokenizer ---------------------------------------------------------------------------


def test_tiny_tokenizer_specials_bos_and_size(tiny_tokenizer):
    assert len(tiny_tokenizer) <= 640
    for token in SPECIAL_TOKENS:
        assert len(tiny_tokenizer.encode(token, add_special_tokens=False)) == 1, token
    ids = tiny_tokenizer("USER: <image>\nhi</s>")["input_ids"]
    assert ids[0] == tiny_tokenizer.bos_token_id == tiny_tokenizer.convert_tokens_to_ids("<s>")
    assert ids[-1] == tiny_tokenizer.eos_token_id == tiny_tokenizer.convert_tokens_to_ids("</s>")
    assert tiny_tokenizer.pad_token == "<pad>" and tiny_tokenizer.model_max_length == 2048
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == "<s>USER: <image>\nhi</s>"


def test_tiny_tokenizer_is_deterministic_and_round_trips(tiny_tokenizer, tmp_path):
    assert build_tiny_tokenizer().get_vocab() == tiny_tokenizer.get_vocab()
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\nWhat colour is the <image> square?<|im_end|>"
    assert loaded(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    assert loaded.bos_token == "<s>" and loaded.pad_token_id == tiny_tokenizer.pad_token_id
    extended = build_tiny_tokenizer(extra_texts=["zyzzyva zyzzyva zyzzyva"] * 20)
    pieces = len(tiny_tokenizer.encode("zyzzyva", add_special_tokens=False))
    assert len(extended.encode("zyzzyva", add_special_tokens=False)) < pieces
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_tokenizer(vocab_size=700)


def test_tiny_tokenizer_splits_numbers_into_digits():
    """Every count answer starts with the same token, however often the training text repeats some counts
    (a plain BPE would merge " 1" and " 2" and leave " 3" split, biasing greedy answers)."""
    counts = " ".join(f"ASSISTANT: {n}</s>" for n in (0, 1, 1, 1, 2, 2, 10, 2024))
    tokenizer = build_tiny_tokenizer(extra_texts=[counts] * 50)
    for digit in "0123456789":
        assert tokenizer.tokenize(f"ASSISTANT: {digit}")[-2:] == ["Ġ", digit], digit
    assert tokenizer.tokenize(" 2024") == ["Ġ", "2", "0", "2", "4"]
    text = "How many? 12 of 305, [0.52, 0.17]"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


# ---- parity with transformers' LlavaProcessor -------------------------------------------------


@pytest.mark.parametrize("mode", ["square", "pad"])
def test_call_matches_transformers_llava_processor(tiny_tokenizer, mode):
    processor = make_processor(tiny_tokenizer, mode=mode)
    reference = transformers_llava_processor(
        processor, patch_size=PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1
    )
    expected_class = "LlavaImageProcessorPil" if mode == "pad" else "CLIPImageProcessorPil"
    assert type(reference.image_processor).__name__ == expected_class
    texts = [
        "USER: <image>\nWhat is this? ASSISTANT:",
        "USER: <image> and <image>: same? ASSISTANT: no</s>",
    ]
    images = [image(40, 25, 0), image(32, 32, 1), image(17, 50, 2)]
    ours = processor(texts, images=images)
    theirs = reference(text=texts, images=images, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=0)
    assert (ours["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [16, 32]


def test_call_accepts_one_list_per_text_and_pads(tiny_tokenizer):
    processor = make_processor(tiny_tokenizer)
    texts = ["<image> a", "b <image> c <image> d"]
    flat = processor(texts, images=[image(8, 8, 0), image(9, 9, 1), image(10, 10, 2)])
    nested = processor(texts, images=[[image(8, 8, 0)], [image(9, 9, 1), image(10, 10, 2)]])
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(flat[key], nested[key])
    lengths = [len(tiny_tokenizer(t)["input_ids"]) + 15 * t.count("<image>") for t in texts]
    assert flat["attention_mask"].sum(dim=1).tolist() == lengths
    assert (flat["input_ids"][0, lengths[0] :] == tiny_tokenizer.pad_token_id).all()
    assert "pixel_values" not in processor("no image here")


def test_call_count_mismatch_names_the_text(tiny_tokenizer):
    processor = make_processor(tiny_tokenizer)
    with pytest.raises(ValueError, match=r"text 1 has 2 <image> placeholder\(s\) but 1 image\(s\)"):
        processor(["<image> a", "<image><image> b"], images=[[image(8, 8, 0)], [image(8, 8, 1)]])
    with pytest.raises(ValueError, match=r"2 image\(s\) given .* 1 <image> placeholder\(s\) \(text 0: 1, text 1: 0\)"):
        processor(["<image> a", "b"], images=[image(8, 8, 0), image(8, 8, 1)])


# ---- training samples: labels on answers only -------------------------------------------------

QUESTIONS = ["<image>\nWhat is it?", "Which color is it?", "How many are there?"]
ANSWERS = ["A red circle.", "It is blue.", "There are three."]
END = {"plain": "\n", "vicuna_v1": "</s>", "chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


def llava_conversation(rounds: int, system: str | None = None) -> list[dict]:
    turns = [{"from": "system", "value": system}] if system else []
    for question, answer in zip(QUESTIONS[:rounds], ANSWERS[:rounds]):
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml", "llama3"])
@pytest.mark.parametrize("rounds", [2, 3])
@pytest.mark.parametrize("system", [None, "Answer briefly."])
def test_labels_cover_exactly_the_answers_and_their_end_tokens(tiny_tokenizer, template, rounds, system):
    processor = make_processor(tiny_tokenizer, template=template)
    sample = processor.encode_conversation(llava_conversation(rounds, system), images=[image(30, 20, 0)])
    runs = labelled_runs(tiny_tokenizer, sample)
    expected = [answer + END[template] for answer in ANSWERS[:rounds]]
    if template == "vicuna_v1":
        # "ASSISTANT: answer": a word token may carry the separating space; nothing more is labelled.
        runs = [run.removeprefix(" ") for run in runs]
    assert runs == expected
    image_positions = sample["input_ids"] == processor.image_token_id
    assert image_positions.sum() == processor.num_image_tokens == 16
    assert (sample["labels"][image_positions] == IGNORE_INDEX).all()
    assert sample["input_ids"][0] == tiny_tokenizer.bos_token_id and sample["labels"][0] == IGNORE_INDEX
    assert sample["attention_mask"].tolist() == [1] * len(sample["input_ids"])
    assert sample["pixel_values"].shape == (1, 3, 32, 32)
    prompt_text = tiny_tokenizer.decode(sample["input_ids"][sample["labels"] == IGNORE_INDEX])
    assert all(question.replace("<image>", "") in prompt_text for question in QUESTIONS[:rounds])


@pytest.mark.parametrize("template", ["vicuna_v1", "llava_v1", "chatml", "llama3", "mistral_instruct"])
@pytest.mark.parametrize("answer", ["BOX", "red", "top left"])
def test_every_token_the_model_must_write_after_the_generation_prompt_is_labelled(tiny_tokenizer, template, answer):
    """Whatever follows the generation prompt is written by the model at inference, so training labels all of it.

    The tiny byte-level BPE makes the space before "BOX" (a word it never saw after a space) a token of its own;
    were that space left unlabelled, the model would never learn to begin such an answer.
    """
    processor = make_processor(tiny_tokenizer, template=template)
    question = [{"from": "human", "value": "<image>\nWhat word is written?"}]
    prompt = get_template(template).render(question, add_generation_prompt=True).text
    full = get_template(template).render([*question, {"from": "gpt", "value": answer}]).text
    assert full.startswith(prompt)
    sample = processor.encode_conversation([*question, {"from": "gpt", "value": answer}], images=[image(30, 20, 0)])
    labelled = sample["labels"] != IGNORE_INDEX
    written = tiny_tokenizer.decode(sample["input_ids"][labelled])
    stop = get_template(template).stop_token
    after_prompt = full[len(prompt) :]
    assert written == after_prompt[: after_prompt.index(stop) + len(stop)]  # up to the token that ends the answer
    # one unbroken run: nothing of the prompt is labelled, nothing the model writes is skipped
    positions = labelled.nonzero().flatten().tolist()
    assert positions == list(range(positions[0], positions[0] + len(positions)))


@pytest.mark.parametrize("rounds", [2, 3])
def test_plain_template_labels_captions_after_the_image_tokens(tiny_tokenizer, rounds):
    processor = make_processor(tiny_tokenizer, template="plain")
    conversation = []
    for answer in ANSWERS[:rounds]:
        conversation += [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": answer}]
    sample = processor.encode_conversation(conversation, images=[image(20, 20, i) for i in range(rounds)])
    assert labelled_runs(tiny_tokenizer, sample) == [answer + "\n" for answer in ANSWERS[:rounds]]
    # <s>, then per round: 16 image tokens and the caption; the instruction text is dropped.
    assert (sample["input_ids"] == processor.image_token_id).sum() == 16 * rounds
    assert (sample["labels"][:17] == IGNORE_INDEX).all()


@pytest.mark.parametrize("template", ["plain", "vicuna_v1", "chatml", "llama3"])
def test_labels_agree_with_transformers_assistant_mask(tiny_tokenizer, template):
    """The Jinja template's {% generation %} blocks give transformers the same loss mask."""
    processor = make_processor(tiny_tokenizer, template=template)
    messages = [
        {"role": "user", "content": "Which color?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "And the square?"},
        {"role": "assistant", "content": "The square is blue."},
    ]
    sample = processor.encode_conversation(messages)
    rendered = tiny_tokenizer.apply_chat_template(
        messages,
        chat_template=get_template(template).chat_template,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    # transformers' tokenizer chat path does not add BOS; ours does: compare after it.
    assert sample["input_ids"][1:].tolist() == rendered["input_ids"]
    assert (sample["labels"][1:] != IGNORE_INDEX).long().tolist() == rendered["assistant_masks"]


def test_encode_errors_name_the_sample_and_file(tiny_tokenizer, tmp_path):
    processor = make_processor(tiny_tokenizer)
    conversation = llava_conversation(1)
    with pytest.raises(ValueError, match=r"sample 'llava-000017' has 1 <image> placeholder\(s\) but 2 image\(s\)"):
        processor.encode_conversation(conversation, images=[image(8, 8, 0)] * 2, sample_id="llava-000017")
    with pytest.raises(ValueError, match=r"sample 'llava-000017' has 1 <image> placeholder\(s\) but 0 image\(s\)"):
        processor.encode_conversation(conversation, sample_id="llava-000017")
    with pytest.raises(ValueError, match="llava-000018.*empty"):
        processor.encode_conversation([], sample_id="llava-000018")
    broken = tmp_path / "broken_0019.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"broken_0019\.jpg.*llava-000019"):
        processor.encode_conversation(conversation, images=[broken], sample_id="llava-000019")
    with pytest.raises(ValueError, match=r"llava-000020' is \d+ tokens long, more than max_length=20"):
        processor.encode_conversation(conversation, images=[image(8, 8, 0)], sample_id="llava-000020", max_length=20)


def test_encode_accepts_image_paths(tiny_tokenizer, tmp_path):
    processor = make_processor(tiny_tokenizer)
    path = tmp_path / "photo.png"
    image(30, 40, 3).save(path)
    from_path = processor.encode_conversation(llava_conversation(1), images=[path])
    from_pil = processor.encode_conversation(llava_conversation(1), images=[image(30, 40, 3)])
    assert torch.equal(from_path["pixel_values"], from_pil["pixel_values"])


# ---- construction, serving helpers ------------------------------------------------------------


def test_from_model_config_reads_the_vision_tower(tiny_tokenizer):
    clip = make_processor(tiny_tokenizer, vision="clip", mode="square")
    assert clip.image_config.size == 32 and clip.image_config.mode == "square"
    assert clip.image_config.mean == (0.48145466, 0.4578275, 0.40821073)
    assert clip.num_image_tokens == 16  # 4x4 patches, CLS dropped
    siglip = make_processor(tiny_tokenizer, vision="siglip")
    assert siglip.image_config.mean == siglip.image_config.std == (0.5, 0.5, 0.5)
    assert siglip.num_image_tokens == 15  # no CLS: `default` drops the first patch, as transformers does
    wrong_id = tiny_llava_config(image_token_id=5)
    with pytest.raises(ValueError, match="has id 4 but the model config expects image_token_id=5"):
        LlavaKitProcessor.from_model_config(tiny_tokenizer, wrong_id, "vicuna_v1")


def test_image_token_must_be_one_added_token(tiny_tokenizer):
    config = ImageProcessingConfig(size=32)
    with pytest.raises(ValueError, match="'<img>' must be a single added token"):
        LlavaKitProcessor(tiny_tokenizer, "vicuna_v1", config, num_image_tokens=4, image_token="<img>")
    with pytest.raises(ValueError, match="unknown conversation template"):
        LlavaKitProcessor(tiny_tokenizer, "vicuna", config, num_image_tokens=4)


def test_apply_chat_template_stop_tokens_and_decode(tiny_tokenizer):
    processor = make_processor(tiny_tokenizer, template="chatml")
    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nHi"}])
    assert prompt.endswith("<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\n")
    question = [{"role": "user", "content": "<image>\nHi"}]
    inputs = processor.apply_chat_template(question, tokenize=True, images=[image(9, 9, 0)])
    assert torch.equal(inputs["input_ids"], processor(prompt, images=[image(9, 9, 0)])["input_ids"])
    assert processor.stop_token_ids == [tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert make_processor(tiny_tokenizer, template="plain").stop_token_ids == [tiny_tokenizer.eos_token_id]
    ids = tiny_tokenizer("Red circle.")["input_ids"]
    assert processor.decode(ids, skip_special_tokens=True) == "Red circle."
    assert processor.batch_decode([ids, ids], skip_special_tokens=True) == ["Red circle."] * 2


# ---- persistence and export -------------------------------------------------------------------


@pytest.mark.parametrize("template", ["vicuna_v1", "llama3"])
def test_save_and_load_give_identical_outputs(tiny_tokenizer, tmp_path, template):
    processor = make_processor(tiny_tokenizer, template=template, mode="pad")
    processor.save_pretrained(tmp_path)
    assert (tmp_path / PROCESSOR_FILE).is_file()
    assert tiny_tokenizer.chat_template is None  # saving does not change the caller's tokenizer
    loaded = LlavaKitProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.tokenizer.chat_template == get_template(template).chat_template
    conversation, images = llava_conversation(2), [image(30, 20, 0)]
    before = processor.encode_conversation(conversation, images)
    after = loaded.encode_conversation(conversation, images)
    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
        assert torch.equal(before[key], after[key]), key
    prompt = processor.apply_chat_template(llava_conversation(1)[:1])
    assert prompt == loaded.apply_chat_template(llava_conversation(1)[:1])
    assert prompt == loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[0]}], tokenize=False, add_generation_prompt=True
    )
    with pytest.raises(FileNotFoundError, match=PROCESSOR_FILE):
        LlavaKitProcessor.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("mode", ["square", "pad"])
def test_exported_transformers_processor_reloads_and_agrees(tiny_tokenizer, tmp_path, mode):
    processor = make_processor(tiny_tokenizer, template="vicuna_v1", mode=mode)
    transformers_llava_processor(
        processor, patch_size=PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1
    ).save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = reloaded.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == processor.apply_chat_template(messages)
    picture = image(45, 28, 4)
    ours, theirs = processor(prompt, images=[picture]), reloaded(text=prompt, images=[picture], return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="would emit 17 image tokens, this processor emits 16"):
        transformers_llava_processor(
            processor, patch_size=PATCH, vision_feature_select_strategy="full", num_additional_image_tokens=1
        )
