"""The base recipe every ablation run starts from: the demo's, at a size where a grid fits in an hour.

The vision tower here reads 32 px (the world's 64 px images halved in the fixed mode, in
32 px tiles in the grid modes), 8 px patches: 16 visual tokens a view. Everything else is the
demo's recipe: language model pretrained on the world, stage 1 on captions, stage 2 on the
demo's short-answer conversations, evaluation on the same held-out questions. The tower is
CLIP trained on the world's captions, as the studies in docs/ablations.md were measured; the
demo's labelled tower (`llavakit.demo.tower`) needs thousands of fresh scenes and steps that
a grid of runs cannot pay for each time.
"""

from __future__ import annotations

from llavakit.demo.settings import DemoSettings

DEFAULT = DemoSettings(
    scenes=500,
    image_size=32,
    patch_size=8,
    vision_hidden=64,
    vision_layers=3,
    vision_pretraining="clip",
    clip_steps=300,
    text_hidden=128,
    text_layers=4,
    lm_steps=400,
    stage1_batch=16,
    stage2_batch=8,
    stage2_epochs=1.0,
    max_length=512,  # room for 144 visual tokens (the MM1 study) beside the longest conversations
    eval_per_set=200,
)
QUICK = DEFAULT.replace(scenes=80, clip_steps=10, clip_batch=32, lm_steps=10, stage2_per_image=1, eval_per_set=20)


def preset_for(quick: bool) -> DemoSettings:
    return QUICK if quick else DEFAULT
