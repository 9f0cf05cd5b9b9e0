"""How big the demo is: one dataclass, three presets.

`full` is the README's run (at most 10 minutes on 2 CPU cores); `quick` is the same recipe
shrunk for the test suite; `hd` adds LLaVA-1.5-HD's high-resolution crops, which read the word.
Every number that decides run time lives here, so the time/quality trade-off is visible in one
place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llavakit.synthetic.world import WorldConfig

VISION_PRETRAINING = ("labels", "clip")


def refuse_negative_weights(weights: Mapping[str, float]) -> None:
    """A negative loss weight would train the tower away from its labels: refuse it, naming it."""
    negative = {name: value for name, value in weights.items() if value < 0}
    if negative:
        raise ValueError(f"the tower's label weights must be >= 0, got {negative}")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and step counts of every phase of the demo."""

    scenes: int = 2000
    test_fraction: float = 0.2
    text_prob: float = 0.3  # the share of the world's scenes that hold a word (its OCR questions)
    image_size: int = 64
    patch_size: int = 8
    # 1: one crop per image (LLaVA-1.5); g > 1: LLaVA-1.5-HD's split, the image also upscaled g times
    # and cut into g x g crops of `image_size`, each read by the same tower (`image_mode: anyres`)
    hd_grid: int = 1
    connector: str = "mlp2x_gelu"
    connector_tokens: int | None = None  # a pooling connector's tokens per crop (MM1's avg_pool, ...)
    vocab_size: int = 640
    # vision tower pretraining: "labels" (what each scene holds, `llavakit.demo.tower`) or "clip" (captions)
    vision_pretraining: str = "labels"
    vision_hidden: int = 96
    vision_layers: int = 4
    tower_scenes: int = 9500  # fresh scenes of the same world, drawn for the labelled tower only
    tower_steps: int = 1000
    tower_kind_weight: float = 3.0
    tower_count_weight: float = 10.0  # its "at least k of ..." labels; 0 leaves counting out of its loss
    # with hd_grid > 1: high-resolution crops a tower step also learns the word from (0: none),
    # cut from fresh scenes that all hold a word (`llavakit.demo.tile_words`)
    tower_tile_batch: int = 0
    tower_word_scenes: int = 4000
    clip_steps: int = 300
    clip_batch: int = 64  # the batch of either pretraining
    clip_lr: float = 2e-3  # the rate of either pretraining
    # language model pretraining
    text_hidden: int = 128
    text_layers: int = 4
    lm_steps: int = 150
    lm_batch: int = 16
    lm_context: int = 256
    lm_lr: float = 1e-3
    # stage 1 (connector) and stage 2 (connector + LLM [+ vision tower])
    stage1_epochs: float = 1.0
    stage1_batch: int = 32
    stage1_lr: float = 2e-3
    stage2_epochs: float = 2.0  # a second pass turns counting and size from noise into margins (docs/demo.md)
    stage2_fraction: float = 1.0
    stage2_batch: int = 8
    # stage-2 data: instruction kinds (`llavakit.synthetic.instruct`) and samples of each per training image
    stage2_kinds: tuple[str, ...] = ("qa",)
    stage2_per_image: int = 2
    stage2_lr: float = 1e-3
    stage2_vision_lr: float | None = None
    max_length: int = 384
    # evaluation
    eval_per_set: int | None = 500
    eval_batch: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vision_pretraining not in VISION_PRETRAINING:
            raise ValueError(
                f"unknown vision_pretraining {self.vision_pretraining!r}; choose one of {', '.join(VISION_PRETRAINING)}"
            )
        refuse_negative_weights(
            {"tower_kind_weight": self.tower_kind_weight, "tower_count_weight": self.tower_count_weight}
        )
        if self.hd_grid < 1:
            raise ValueError(f"hd_grid must be >= 1 (1: no high-resolution crops), got {self.hd_grid}")
        if self.tower_tile_batch < 0:
            raise ValueError(f"tower_tile_batch must be >= 0, got {self.tower_tile_batch}")
        if self.tower_tile_batch and (self.hd_grid == 1 or self.vision_pretraining != "labels"):
            raise ValueError(
                "tower_tile_batch needs the high-resolution crops (hd_grid > 1) and the labelled tower "
                f"(vision_pretraining='labels'), got hd_grid={self.hd_grid}, "
                f"vision_pretraining={self.vision_pretraining!r}"
            )

    def world_config(self) -> WorldConfig:
        """The synthetic world the demo renders; building it checks its fields (imported here:
        `llavakit --help` loads the presets and must not load Pillow)."""
        from llavakit.synthetic.world import WorldConfig

        return WorldConfig(text_prob=self.text_prob)

    @property
    def grid_pinpoints(self) -> list[list[int]] | None:
        """The one canvas the grid mode upscales each image onto, or None with one crop per image."""
        side = self.hd_grid * self.image_size
        return [[side, side]] if self.hd_grid > 1 else None

    def replace(self, **changes: object) -> DemoSettings:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, DemoSettings] = {
    "full": DemoSettings(),
    "quick": DemoSettings(
        scenes=800,
        tower_scenes=3000,
        tower_steps=200,
        clip_steps=150,
        lm_steps=30,
        stage2_epochs=1.0,
        eval_per_set=200,
    ),
    # LLaVA-1.5-HD: the tower reads the word on 2x crops, and the LLM needs four stage-2 epochs
    # to find it in one crop's tokens (docs/demo.md); about 15 minutes on 2 CPU cores
    "hd": DemoSettings(hd_grid=2, connector="avg_pool", connector_tokens=16, tower_tile_batch=32, stage2_epochs=4.0),
}


def preset(name: str) -> DemoSettings:
    """A named preset; a clear error lists the names."""
    if name not in PRESETS:
        raise ValueError(f"unknown demo size {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
