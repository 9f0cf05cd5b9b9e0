"""Pretrain the demo's two backbones from scratch, so nothing has to be downloaded.

LLaVA starts from a contrastively pretrained vision encoder (CLIP) and a pretrained language
model. The demo makes tiny versions of both on the synthetic world: a transformers
`CLIPModel` trained with its own contrastive loss on (image, caption) pairs, and a
transformers causal LM trained on the world's text. Plain loops: a few hundred steps of
AdamW on transformers' warmup + cosine schedule, with a progress bar and the loss history
returned for the plots.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionModel,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_cosine_schedule_with_warmup,
)

from llavakit.processing.images import (
    CLIP_MEAN,
    CLIP_STD,
    ImageProcessingConfig,
    load_image,
    preprocess,
)


@dataclass
class LoopSettings:
    """How long and how fast one pretraining loop runs; the loop appends each step's loss and rate."""

    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)

    @property
    def warmup_steps(self) -> int:
        """The first 5 % of the steps (at least one) warm the rate up."""
        return max(1, self.steps // 20)


def tower_image_config(image_size: int) -> ImageProcessingConfig:
    """How the demo's processor feeds either tower: square images, CLIP's statistics."""
    return ImageProcessingConfig(mode="square", size=image_size, mean=CLIP_MEAN, std=CLIP_STD)


def shuffled_batches(n: int, batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless shuffled index batches (epoch after epoch)."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def train_loop(
    model: torch.nn.Module, settings: LoopSettings, batches: Iterator[dict[str, torch.Tensor]], description: str
) -> None:
    """AdamW with linear warmup then cosine decay over `settings.steps` batches of model kwargs
    (the model's output has a `.loss`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.steps)
    model.train()
    progress = tqdm(range(settings.steps), desc=description, unit="step")
    for _ in progress:
        settings.learning_rates.append(optimizer.param_groups[0]["lr"])
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        settings.losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


def _clip_batches(
    pixels: torch.Tensor, captions: list[list[int]], pad_id: int, settings: LoopSettings
) -> Iterator[dict[str, torch.Tensor]]:
    for indices in shuffled_batches(len(captions), settings.batch_size, random.Random(settings.seed)):
        longest = max(len(captions[i]) for i in indices)
        ids = torch.full((len(indices), longest), pad_id)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(indices):
            ids[row, : len(captions[i])] = torch.tensor(captions[i])
            mask[row, : len(captions[i])] = 1
        yield dict(pixel_values=pixels[indices], input_ids=ids, attention_mask=mask, return_loss=True)


def clip_text_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids for CLIP's text tower, each ending in the pad id, which the tower pools at.

    CLIP pools the text at the first end-of-text token; transformers treats an end id of 2 (the
    tiny tokenizer's EOS) as the legacy "largest id" rule, which would pool at a random word. A
    trailing pad id (attended, unlike padding) marks the end unambiguously.
    """
    return [ids + [tokenizer.pad_token_id] for ids in tokenizer(list(texts))["input_ids"]]


def pretrain_clip(
    image_paths: Sequence[Path],
    captions: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    image_size: int,
    patch_size: int,
    hidden_size: int,
    num_layers: int,
    settings: LoopSettings,
) -> CLIPModel:
    """A tiny CLIP trained contrastively on (image, caption) pairs; its vision half becomes the tower."""
    torch.manual_seed(settings.seed)
    image_config = tower_image_config(image_size)
    pixels = torch.from_numpy(np.stack([preprocess(load_image(path), image_config) for path in image_paths]))
    end = tokenizer.pad_token_id
    tokenized = clip_text_ids(tokenizer, captions)
    tower = dict(
        hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers, num_attention_heads=4
    )
    config = CLIPConfig(
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=128,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=end,
            pad_token_id=end,
        ),
        projection_dim=hidden_size,
    )
    model = CLIPModel(config)
    train_loop(model, settings, _clip_batches(pixels, tokenized, tokenizer.pad_token_id, settings), "CLIP pretraining")
    return model


def pretrain_language_model(
    model: PreTrainedModel,
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    context: int,
    settings: LoopSettings,
) -> PreTrainedModel:
    """Next-token training on the world's text, packed into `context`-token chunks (GPT-style)."""
    torch.manual_seed(settings.seed)
    stream: list[int] = []
    for ids in tokenizer(list(texts))["input_ids"]:
        stream.extend(ids if ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id])
    usable = len(stream) // context * context
    if usable == 0:
        raise ValueError(f"the text corpus has {len(stream)} tokens, fewer than one {context}-token chunk")
    chunks = torch.tensor(stream[:usable]).view(-1, context)
    batches = (
        dict(input_ids=chunks[indices], labels=chunks[indices])
        for indices in shuffled_batches(len(chunks), settings.batch_size, random.Random(settings.seed))
    )
    train_loop(model, settings, batches, "language model pretraining")
    return model


def language_model_config(tokenizer: PreTrainedTokenizerBase, hidden_size: int, num_layers: int) -> LlamaConfig:
    """A small Llama whose vocabulary is exactly the tokenizer's."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def vision_half(clip: CLIPModel) -> CLIPVisionModel:
    """The vision tower of a trained CLIP as a standalone model (what LLaVA loads), with the trained weights.

    Copied by a strict `load_state_dict`, so a change in how transformers nests the tower is an error here
    rather than a silently random tower in the saved folder.
    """
    vision = CLIPVisionModel(clip.config.vision_config)
    vision.load_state_dict(clip.vision_model.state_dict(), strict=True)
    return vision
