"""Tokenizer preparation: the one place that makes a language model's tokenizer LLaVA-ready.

A LLaVA tokenizer needs the image placeholder as a single added token (the processor expands
it, the model finds it by id) and a pad token for batches; Vicuna and Llama ship neither.
"""

from __future__ import annotations

import logging

from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, image_token: str) -> int:
    """Add `image_token` as one special token and a pad token when missing; return the image token id.

    The pad token follows LLaVA: the unknown token when there is one (Vicuna / Llama), else EOS.
    """
    if image_token not in tokenizer.get_added_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [image_token]}, replace_extra_special_tokens=False)
        logger.info("added %s to the tokenizer as id %d", image_token, tokenizer.convert_tokens_to_ids(image_token))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer has no pad, unk or eos token to pad batches with")
    return int(tokenizer.convert_tokens_to_ids(image_token))
