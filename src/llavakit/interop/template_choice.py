"""The conversation template an imported checkpoint gets, and why (`--template` overrides it).

Why: a LLaVA model answers well only in the prompt format it was tuned with, and a folder
rarely says which one that was. The language model family and its tokenizer say it well
enough, and the reason is reported with the choice so a user can tell a guess from a fact:

    original LLaVA / LLaVA-NeXT / OneVision            template (the original's --version)
    Qwen2 (LLaVA-OneVision, LLaVA-NeXT Qwen)           qwen_1_5
    Mistral / Mixtral (LLaVA-NeXT Mistral)             mistral_instruct
    Gemma                                              gemma_instruct
    Llama with a Llama-3 tokenizer (<|eot_id|>)        llama3
    Llama with a ChatML tokenizer (Nous-Hermes-2-Yi-34B, LLaVA-NeXT-34B)   chatml_direct
    Llama with a Llama-2-chat tokenizer (<<SYS>>)      llava_llama_2
    other Llama (Vicuna: LLaVA-1.5, LLaVA-NeXT Vicuna) vicuna_v1 (trained with `--version v1`)

transformers folders keep the choices llavakit always made for them: Qwen `chatml`, a Llama 3
tokenizer `llama3`, anything else `vicuna_v1`.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

_CHATML_START = "<|im_start|>"


@dataclass(frozen=True)
class TemplateChoice:
    """A template name and why it was chosen ("from the Qwen2 language model"); `given`: the caller named it."""

    name: str
    reason: str
    given: bool = False


def _chat_template_text(tokenizer: PreTrainedTokenizerBase) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return " ".join(str(value) for value in template.values())
    return str(template or "")


def _llama_family_choice(tokenizer: PreTrainedTokenizerBase) -> TemplateChoice:
    """A Llama-architecture model's format, told by its tokenizer (the architecture serves many chat formats)."""
    chat = _chat_template_text(tokenizer)
    if tokenizer.eos_token == "<|eot_id|>":
        return TemplateChoice("llama3", "from the tokenizer's <|eot_id|> end token (a Llama 3 language model)")
    if tokenizer.eos_token == "<|im_end|>" or _CHATML_START in chat:
        return TemplateChoice(
            "chatml_direct",
            "from the ChatML tokenizer of a Llama-architecture model (LLaVA-NeXT-34B's Nous-Hermes-2-Yi format)",
        )
    if "<<SYS>>" in chat:
        return TemplateChoice("llava_llama_2", "from the tokenizer's Llama-2-chat template (<<SYS>>)")
    return TemplateChoice(
        "vicuna_v1",
        "a Llama-architecture model without a chat-specific tokenizer: the Vicuna v1 format LLaVA-1.5 and "
        "LLaVA-NeXT Vicuna models were trained with",
    )


def _original_family_choice(text_model_type: str) -> TemplateChoice | None:
    """The format an original checkpoint's language model family fixes, or None when the tokenizer must tell."""
    if text_model_type.startswith("qwen"):
        return TemplateChoice("qwen_1_5", "from the Qwen2 language model (LLaVA-OneVision's format)")
    if text_model_type in ("mistral", "mixtral"):
        return TemplateChoice("mistral_instruct", "from the Mistral language model (LLaVA-NeXT Mistral's format)")
    if text_model_type.startswith("gemma"):
        return TemplateChoice("gemma_instruct", "from the Gemma language model")
    return None


def _transformers_choice(text_model_type: str, tokenizer: PreTrainedTokenizerBase) -> TemplateChoice:
    """transformers Llava-family folders: the choices llavakit has always made for them."""
    if text_model_type.startswith("qwen"):
        return TemplateChoice("chatml", "from the Qwen language model (ChatML)")
    if tokenizer.eos_token == "<|eot_id|>":
        return TemplateChoice("llama3", "from the tokenizer's <|eot_id|> end token (a Llama 3 language model)")
    return TemplateChoice("vicuna_v1", "the Vicuna v1 format, llavakit's default for other language models")


def default_template(
    text_model_type: str, tokenizer: PreTrainedTokenizerBase, original: bool = False
) -> TemplateChoice:
    """The template a language model family was tuned with, and the reason (override with --template).

    original: the checkpoint comes from the original LLaVA / LLaVA-NeXT code: its family and
    tokenizer pick among the original's own formats (`qwen_1_5`, `mistral_instruct`, ...).
    """
    if not original:
        return _transformers_choice(text_model_type, tokenizer)
    return _original_family_choice(text_model_type) or _llama_family_choice(tokenizer)
