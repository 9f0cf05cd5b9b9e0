"""Tiny parts that build in milliseconds: model configs and a tokenizer trained in-process.

Used by the tests, the benchmarks, the demo and the offline `chat` of a random model: nothing
is downloaded, and the whole LLaVA path (tokenize, encode, project, splice, decode) still runs.

The tokenizer is a byte-level BPE trained on a small built-in English corpus (plus any texts
the caller adds) with the `tokenizers` library; training is deterministic, so two builds give
the same ids. Every special token of the conversation templates is a single id, BOS `<s>` is
added in front by the post-processor (as Llama's tokenizer does), EOS is `</s>`, PAD `<pad>`.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

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


# ---- tokenizer --------------------------------------------------------------------------------

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (
    UNK,
    BOS,
    EOS,
    PAD,
    "<image>",
    "<video>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
# `tiny_text_config()` has 640 embedding rows; the vocabulary must fit in them.
MAX_VOCAB_SIZE = 640

_CORPUS = (
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "You are a helpful assistant. You are a helpful language and vision assistant.",
    "You are able to understand the visual content that the user provides.",
    "USER: What is shown in the image? ASSISTANT: The image shows a red circle.",
    "user assistant system human gpt USER ASSISTANT SYSTEM",
    "Describe the image in detail. Describe this picture briefly.",
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "What color is the square? The square is blue.",
    "How many shapes are there in the picture? There are three shapes.",
    "Where is the triangle? The triangle is at the top left of the image.",
    "Is the circle larger than the square? Yes, the circle is larger.",
    "A small green triangle next to a large yellow circle on a white background.",
    "A photo of a cat sitting on a wooden table near a window.",
    "A dog runs across the grass in a park on a sunny day.",
    "Two people are walking along the beach at sunset.",
    "The man is holding an umbrella in the rain.",
    "There is a bus parked on the side of the street.",
    "What is the capital of France? Paris is the capital of France.",
    "red green blue yellow orange purple black white gray brown pink",
    "circle square triangle star rectangle ellipse line box object shape",
    "left right top bottom center middle above below near far inside outside",
    "one two three four five six seven eight nine ten zero",
    "0 1 2 3 4 5 6 7 8 9 10 100 2024",
    "small large big tiny huge short long wide narrow bright dark",
    "The quick brown fox jumps over the lazy dog.",
    "Please look at the picture and tell me what you see.",
    "Can you explain why the sky looks blue during the day?",
    "The answer is yes. The answer is no. I am not sure.",
    "Compare the two images and describe the differences.",
    "In the first frame of the video a ball rolls to the right.",
    "Read the text in the image: OPEN 24 HOURS.",
    "def main(): return 0  # code, numbers 3.14 and symbols (a) [b] {c} <d> - + = * / %",
)


def _train(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    # Numbers digit by digit, the space before them a token of its own (as Llama 2 and Qwen split them):
    # every count then starts with the same token and its digit decides. A BPE that merges " 1" and
    # " 2" but not " 3" makes greedy decoding weigh " 2" against 3, 4 and 5 together.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # Untrimmed offsets: every character belongs to exactly one token, which label masking relies on.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tokenizer


def build_tiny_tokenizer(extra_texts: list[str] | None = None, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus plus `extra_texts`.

    `vocab_size` counts the 256 byte symbols and the special tokens too; it may not exceed
    640 so that ids fit the tiny language models.
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if not minimum <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be in [{minimum}, {MAX_VOCAB_SIZE}], got {vocab_size}")
    texts = list(_CORPUS) + list(extra_texts or [])
    backend = _train(texts, vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (UNK, BOS, EOS, PAD)],
        model_max_length=2048,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
