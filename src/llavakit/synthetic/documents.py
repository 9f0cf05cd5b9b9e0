"""Interleaved documents and a text-only corpus from the synthetic world, for MM1-style mixtures.

MM1 pretrains on captions, interleaved image-text documents and text in one mixture. The world
gives all three with exact ground truth: a document strings several scenes together, each
image followed by its description in words (OBELICS form: `texts` / `images` lists of one
length, one non-null entry per index), and the text corpus tells scenes in words only, so the
language model learns the world's vocabulary without pictures.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from llavakit.synthetic.world import Scene, caption, describe

# Openings of a document's paragraphs before each picture, so documents are not one template.
_LEADS = (
    "Here is another picture.",
    "The next image shows a new scene.",
    "Look at this one.",
    "Another drawing follows.",
)


def build_documents(scenes: Sequence[Scene], seed: int = 0, max_images: int = 3) -> list[dict[str, Any]]:
    """OBELICS-form documents of 1 to `max_images` consecutive scenes: lead, image, description."""
    rng = random.Random(f"llavakit-documents:{seed}")
    documents, start = [], 0
    while start < len(scenes):
        group = scenes[start : start + rng.randint(1, max_images)]
        texts: list[str | None] = []
        images: list[str | None] = []
        for scene in group:
            texts += [rng.choice(_LEADS), None, describe(scene)]
            images += [None, scene.image, None]
        documents.append({"id": f"doc-{group[0].id}", "texts": texts, "images": images})
        start += len(group)
    return documents


def build_text_corpus(scenes: Sequence[Scene]) -> list[dict[str, str]]:
    """One plain-text record a scene: its caption and its description, no image."""
    return [{"id": f"text-{scene.id}", "text": f"A picture of {caption(scene)}. {describe(scene)}"} for scene in scenes]
