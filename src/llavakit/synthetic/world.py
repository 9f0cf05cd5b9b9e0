"""The built-in synthetic visual world: coloured shapes with exact ground truth.

Why: a tiny LLaVA must learn something checkable in minutes on a CPU, offline. Scenes of
a few shapes (kinds x colours x 3 sizes, positions on a 3x3 grid, sometimes a word) give
captions, detailed descriptions, boxes, counts and OCR answers that are right by
construction, so training curves and evaluation scores mean something.

    from llavakit.synthetic.world import WorldConfig, write_world
    manifest = write_world("runs/world", n=500, seed=0)   # images/*.png + scenes_*.jsonl

Guarantees (the tests check them):
- every object's box (COCO `x, y, w, h`, pixels) is the tight box of its drawn pixels and
  lies inside the image; the word's box is the tight box of its ink;
- counts are answerable: objects of the same colour never touch (at least one background
  pixel between their boxes); an object drawn on top of another may hide at most
  `1 - min_visible` (default 40%) of the other's pixels and must leave them in one
  4-connected piece, so the pieces of each colour are exactly the objects of that colour;
  the word never touches an object;
- the same seed and config give the same bytes in every written file.

Category frequencies are skewed (earlier colours and kinds are more common) and most
scenes draw their colours from one palette (warm or cool), so "popular" and
"adversarial" POPE negatives differ from random ones, as they do on natural images.
Images are rendered with PIL.ImageDraw only, no anti-aliasing: every pixel of an object
has exactly its colour.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from llavakit.errors import ConfigError, DataError

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 30),
    "pink": (245, 120, 180),
    "brown": (130, 80, 40),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light gray": (200, 200, 200),
    "dark gray": (70, 70, 70),
}
TEXT_RGB: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255)}
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "medium", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "center", "right")
POSITIONS: tuple[str, ...] = tuple(
    "center" if (row, col) == ("middle", "center") else f"{row} {col}" for row in ROWS for col in COLUMNS
)
WORDS: tuple[str, ...] = ("CAT", "DOG", "SUN", "CAR", "HAT", "BOX", "KEY", "CUP", "MAP", "PEN", "BUS", "FOX")
_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class WorldConfig:
    """What the world may contain; defaults suit a 32..64 px vision tower with patch 8.

    Object sizes are fractions of `image_size` (rounded to odd pixel counts so triangles and
    diamonds are symmetric); high-resolution scenes (`highres_prob`) use a `highres_size`
    canvas with the same pixel sizes, i.e. small objects and small text in a large image.
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 5
    max_groups: int = 3
    kinds: tuple[str, ...] = KINDS
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    size_fractions: tuple[float, float, float] = (0.16, 0.23, 0.3)
    backgrounds: tuple[str, ...] = ("white", "light gray", "dark gray")
    palettes: tuple[tuple[str, ...], ...] = (("red", "orange", "yellow"), ("blue", "green", "purple"))
    palette_bias: float = 0.7
    frequency_skew: float = 0.6
    text_prob: float = 0.3
    words: tuple[str, ...] = WORDS
    highres_prob: float = 0.0
    highres_size: int = 256
    min_visible: float = 0.6
    placement_tries: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("kinds", "colours", "size_fractions", "backgrounds", "palettes", "words"):
            value = getattr(self, name)
            if isinstance(value, list):  # YAML / JSON give lists; keep the dataclass hashable
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
                object.__setattr__(self, name, value)
        bad = [c for c in self.colours if c not in COLOUR_RGB]
        if bad or not self.colours:
            raise ValueError(f"WorldConfig.colours: unknown {bad}; known: {sorted(COLOUR_RGB)}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"WorldConfig.kinds: unknown {bad}; known: {list(KINDS)}")
        bad = [b for b in self.backgrounds if b not in BACKGROUND_RGB]
        if bad or not self.backgrounds:
            raise ValueError(f"WorldConfig.backgrounds: unknown {bad}; known: {sorted(BACKGROUND_RGB)}")
        if len(self.size_fractions) != len(SIZES) or not all(0 < f < 1 for f in self.size_fractions):
            raise ValueError(f"WorldConfig.size_fractions must be {len(SIZES)} fractions in (0, 1)")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("WorldConfig needs 1 <= min_objects <= max_objects")
        if self.image_size < 16 or self.highres_size < self.image_size:
            raise ValueError("WorldConfig needs image_size >= 16 and highres_size >= image_size")
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError("WorldConfig.min_visible must be in (0, 1]")
        for name in ("text_prob", "highres_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if any(not w or not w.isascii() or not w.isprintable() for w in self.words):
            raise ValueError("WorldConfig.words must be non-empty printable ASCII strings")
        too_wide = [w for w in self.words if _word_ink(w, _font())[2] > self.image_size // 2]
        if too_wide:
            raise ValueError(f"WorldConfig.words {too_wide} are wider than half of image_size={self.image_size}")

    def size_pixels(self) -> dict[str, int]:
        """Side length in pixels of each size name (odd, at least 5)."""
        return {name: max(5, round(f * self.image_size)) | 1 for name, f in zip(SIZES, self.size_fractions)}

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"WorldConfig: unknown fields {sorted(unknown)}")
        return cls(**data)


Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class SceneObject:
    """One shape; `box` is COCO-style (x, y, w, h) in pixels, tight around its pixels."""

    kind: str
    colour: str
    size: str
    box: Box
    position: str

    @property
    def category(self) -> str:
        """The category used by counting and POPE questions: colour + kind, e.g. "red circle"."""
        return f"{self.colour} {self.kind}"

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "colour": self.colour,
            "size": self.size,
            "category": self.category,
            "box": list(self.box),
            "position": self.position,
        }


@dataclass(frozen=True)
class SceneWord:
    """A rendered word (OCR target); `box` is the tight box of its ink."""

    text: str
    box: Box
    position: str
    colour: str

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "box": list(self.box), "position": self.position, "colour": self.colour}


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image and to answer any question about it.

    Objects are listed in drawing order: a later object is in front of an earlier one.
    `id` and `image` (path relative to the world folder) are set by `generate_world`.
    """

    width: int
    height: int
    background: str
    objects: tuple[SceneObject, ...]
    word: SceneWord | None = None
    id: str = ""
    image: str = ""

    def counts(self) -> Counter[str]:
        """Number of objects per category ("red circle" -> 2)."""
        return Counter(obj.category for obj in self.objects)

    def to_dict(self) -> dict[str, Any]:
        """The ground-truth record written to scenes_*.jsonl."""
        return {
            "id": self.id,
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "background": self.background,
            "objects": [obj.to_dict() for obj in self.objects],
            "word": self.word.to_dict() if self.word else None,
            "counts": dict(sorted(self.counts().items())),
            "caption": caption(self),
            "description": describe(self),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Scene:
        """Read a scenes_*.jsonl record back, checking that its boxes fit the image."""
        name = record.get("id", "?")
        try:
            width, height = int(record["width"]), int(record["height"])
            objects = tuple(
                SceneObject(o["kind"], o["colour"], o["size"], _box(o["box"]), o["position"]) for o in record["objects"]
            )
            w = record.get("word")
            word = SceneWord(w["text"], _box(w["box"]), w["position"], w["colour"]) if w else None
            scene = cls(width, height, record["background"], objects, word, str(record["id"]), record["image"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"scene {name!r}: malformed record ({err!r})") from err
        vocabulary = (("kind", KINDS), ("colour", COLOUR_RGB), ("size", SIZES), ("position", POSITIONS))
        for obj in objects:
            for attribute, known in vocabulary:
                if getattr(obj, attribute) not in known:
                    raise ValueError(f"scene {name!r}: unknown {attribute} {getattr(obj, attribute)!r}")
        if scene.background not in BACKGROUND_RGB or (word and word.colour not in TEXT_RGB):
            raise ValueError(f"scene {name!r}: unknown background or text colour")
        for box in [o.box for o in objects] + ([word.box] if word else []):
            if not _inside(box, width, height):
                raise ValueError(f"scene {name!r}: box {list(box)} is outside the {width}x{height} image")
        return scene


@dataclass(frozen=True)
class WorldManifest:
    """Where `write_world` put things and how they were made (also saved as world.json)."""

    root: Path
    images_dir: Path
    train_path: Path
    test_path: Path
    n_train: int
    n_test: int
    seed: int
    config: WorldConfig = field(default_factory=WorldConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images_dir": self.images_dir.name,
            "train": self.train_path.name,
            "test": self.test_path.name,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "seed": self.seed,
            "config": self.config.to_dict(),
        }


# --- geometry -------------------------------------------------------------------------


def _box(value: Sequence[Any]) -> Box:
    if len(value) != 4:
        raise ValueError(f"a box needs 4 numbers, got {value!r}")
    x, y, w, h = (int(v) for v in value)
    return x, y, w, h


def _inside(box: Box, width: int, height: int) -> bool:
    x, y, w, h = box
    return x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height


def _intersects(a: Box, b: Box, gap: int = 0) -> bool:
    """Whether boxes overlap, or come closer than `gap` background pixels."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw + gap and bx < ax + aw + gap and ay < by + bh + gap and by < ay + ah + gap


def position_name(cx: float, cy: float, width: int, height: int) -> str:
    """The 3x3 grid cell ("top left" ... "center" ... "bottom right") holding a point."""
    row = ROWS[min(2, int(3 * cy / height))]
    col = COLUMNS[min(2, int(3 * cx / width))]
    return "center" if (row, col) == ("middle", "center") else f"{row} {col}"


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: Box, fill: Any) -> None:
    x, y, w, h = box
    right, bottom, cx, cy = x + w - 1, y + h - 1, x + (w - 1) // 2, y + (h - 1) // 2
    if kind == "circle":
        draw.ellipse([x, y, right, bottom], fill=fill)
    elif kind == "square":
        draw.rectangle([x, y, right, bottom], fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, y), (x, bottom), (right, bottom)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, y), (right, cy), (cx, bottom), (x, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; known: {list(KINDS)}")


def shape_mask(kind: str, box: Box, width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of the pixels a shape covers, drawn exactly as rendered."""
    image = Image.new("1", (width, height), 0)
    _draw_shape(ImageDraw.Draw(image), kind, box, 1)
    return np.asarray(image, dtype=bool)


def overlapping_pairs(scene: Scene) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of objects whose pixels overlap; object j is drawn in front of i."""
    masks: dict[int, np.ndarray] = {}

    def mask(i: int) -> np.ndarray:
        if i not in masks:
            obj = scene.objects[i]
            masks[i] = shape_mask(obj.kind, obj.box, scene.width, scene.height)
        return masks[i]

    pairs = []
    for j, front in enumerate(scene.objects):
        for i in range(j):
            if _intersects(scene.objects[i].box, front.box) and (mask(i) & mask(j)).any():
                pairs.append((i, j))
    return pairs


def is_one_piece(mask: np.ndarray) -> bool:
    """Whether the True pixels of a small mask form one 4-connected piece (flood fill by dilation)."""
    if not mask.any():
        return False
    grown = np.zeros_like(mask)
    grown[tuple(np.argwhere(mask)[0])] = True
    while True:
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        step &= mask
        if (step == grown).all():
            return bool((grown == mask).all())
        grown = step


def _font() -> ImageFont.ImageFont:
    """PIL's built-in bitmap font: identical pixels on every machine (no FreeType)."""
    return ImageFont.load_default_imagefont()


def _word_ink(text: str, font: ImageFont.ImageFont) -> tuple[int, int, int, int]:
    """(dx, dy, w, h) of the ink of `text` drawn at (0, 0)."""
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("1", (right + 2, bottom + 2), 0)
    ImageDraw.Draw(image).text((0, 0), text, font=font, fill=1)
    ys, xs = np.nonzero(np.asarray(image, dtype=bool))
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


# --- generation -----------------------------------------------------------------------


def _pick_categories(rng: random.Random, config: WorldConfig, n: int) -> list[tuple[str, str]]:
    """(colour, kind) for each of `n` objects: a few groups of repeated categories."""
    colours = list(config.colours)
    palettes = [p for p in (tuple(c for c in pal if c in colours) for pal in config.palettes) if p]
    if palettes and rng.random() < config.palette_bias:
        colours = list(rng.choice(palettes))
    candidates = [(c, k) for c in colours for k in config.kinds]
    weights = [
        1.0 / ((config.colours.index(c) + 1) * (config.kinds.index(k) + 1)) ** config.frequency_skew
        for c, k in candidates
    ]
    n_groups = rng.randint(1, min(config.max_groups, n, len(candidates)))
    groups: list[tuple[str, str]] = []
    for _ in range(n_groups):
        pick = rng.choices(range(len(candidates)), weights=weights)[0]
        groups.append(candidates.pop(pick))
        weights.pop(pick)
    counts = [1] * n_groups
    for _ in range(n - n_groups):
        counts[rng.randrange(n_groups)] += 1
    objects = [group for group, count in zip(groups, counts) for _ in range(count)]
    rng.shuffle(objects)
    return objects


class _Canvas:
    """Placement state: boxes, colours and the still-visible pixels of each placed object."""

    def __init__(self, width: int, height: int, min_visible: float, obstacles: Sequence[Box] = ()):
        self.width, self.height, self.min_visible = width, height, min_visible
        self.obstacles = tuple(obstacles)  # boxes no object may touch (the word)
        self.objects: list[SceneObject] = []
        self.visible: list[np.ndarray | None] = []  # computed lazily, on first overlap
        self.areas: list[int] = []

    def _visible(self, i: int) -> np.ndarray:
        if self.visible[i] is None:
            obj = self.objects[i]
            self.visible[i] = shape_mask(obj.kind, obj.box, self.width, self.height)
        return self.visible[i]

    def try_add(self, kind: str, colour: str, box: Box) -> bool:
        """Add the object in front of the others if the placement rules allow it."""
        if any(_intersects(box, obstacle, gap=1) for obstacle in self.obstacles):
            return False
        behind = []
        for i, other in enumerate(self.objects):
            if other.colour == colour and _intersects(other.box, box, gap=1):
                return False  # same colour must not touch, or two shapes would read as one
            if _intersects(other.box, box):
                behind.append(i)
        mask = shape_mask(kind, box, self.width, self.height) if behind else None
        for i in behind:
            remaining = self._visible(i) & ~mask
            if remaining.sum() < self.min_visible * self.areas[i]:
                return False
            x, y, w, h = self.objects[i].box
            if not is_one_piece(remaining[y : y + h, x : x + w]):
                return False  # a cut-off sliver would read as an extra object
        for i in behind:
            self.visible[i] = self.visible[i] & ~mask
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        self.objects.append(SceneObject(kind, colour, "", box, position_name(cx, cy, self.width, self.height)))
        self.visible.append(mask)
        self.areas.append(int(mask.sum()) if mask is not None else _shape_area(kind, box))
        return True


def _shape_area(kind: str, box: Box) -> int:
    return int(shape_mask(kind, (0, 0, box[2], box[3]), box[2], box[3]).sum())


def generate_scene(rng: random.Random, config: WorldConfig | None = None) -> Scene:
    """Draw one random scene from `rng` (the only source of randomness)."""
    config = config or WorldConfig()
    side = config.highres_size if rng.random() < config.highres_prob else config.image_size
    background = rng.choice(config.backgrounds)
    n = rng.randint(config.min_objects, config.max_objects)
    pixels = config.size_pixels()
    # the word goes first, on the empty canvas, so that it is never crowded out
    word = _place_word(rng, config, side, background) if rng.random() < config.text_prob else None
    canvas = _Canvas(side, side, config.min_visible, [word.box] if word else [])
    sizes: list[str] = []
    for colour, kind in _pick_categories(rng, config, n):
        size = rng.choice(SIZES)
        # an object that does not fit is retried small, then left out: the ground truth only
        # ever lists what was drawn, so counts stay exact
        for attempt_size in (size, SIZES[0]):
            side_px = pixels[attempt_size]
            placed = False
            for _ in range(config.placement_tries):
                box = (rng.randint(0, side - side_px), rng.randint(0, side - side_px), side_px, side_px)
                if canvas.try_add(kind, colour, box):
                    placed = True
                    break
            if placed:
                sizes.append(attempt_size)
                break
    objects = tuple(dataclasses.replace(obj, size=s) for obj, s in zip(canvas.objects, sizes))
    return Scene(side, side, background, objects, word)


def _place_word(rng: random.Random, config: WorldConfig, side: int, background: str) -> SceneWord:
    text = rng.choice(config.words)
    _, _, w, h = _word_ink(text, _font())  # WorldConfig checked that it fits
    box = (rng.randint(0, side - w), rng.randint(0, side - h), w, h)
    colour = "black" if sum(BACKGROUND_RGB[background]) / 3 > 128 else "white"
    return SceneWord(text, box, position_name(box[0] + w / 2, box[1] + h / 2, side, side), colour)


def generate_world(n: int, seed: int | None = None, config: WorldConfig | None = None) -> list[Scene]:
    """`n` scenes with ids "000000"... and image paths "images/<id>.png".

    Scene i depends only on (seed, i), so growing `n` keeps the earlier scenes unchanged.
    """
    config = config or WorldConfig()
    seed = config.seed if seed is None else seed
    if n < 1:
        raise ConfigError(f"generate_world: n must be >= 1, got {n}")
    width = max(6, len(str(n - 1)))
    scenes = []
    for i in range(n):
        scene_id = f"{i:0{width}d}"
        scene = generate_scene(random.Random(f"llavakit-synth:{seed}:{i}"), config)
        scenes.append(dataclasses.replace(scene, id=scene_id, image=f"images/{scene_id}.png"))
    return scenes


def check_split(n: int, test_fraction: float) -> None:
    """Refuse a world size and test share that leave no training scene or no test scene."""
    if not isinstance(n, int) or n < 2:
        raise ConfigError(f"n={n}: a world needs at least 2 scenes, one to train on and one to test on")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")
    test = round(n * test_fraction)
    if test < 1 or test > n - 1:
        side = "test" if test < 1 else "training"
        raise ConfigError(
            f"test_fraction={test_fraction} of n={n} scenes leaves no {side} scene ({test} of {n} for test)"
        )


def split_scenes(scenes: Sequence[Scene], test_fraction: float, seed: int) -> tuple[list[Scene], list[Scene]]:
    """Split by image (no image in both halves), deterministically from `seed`."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1], got {test_fraction}")
    order = list(range(len(scenes)))
    random.Random(f"llavakit-split:{seed}").shuffle(order)
    test_ids = set(order[: round(len(scenes) * test_fraction)])
    train = [s for i, s in enumerate(scenes) if i not in test_ids]
    test = [s for i, s in enumerate(scenes) if i in test_ids]
    return train, test


# --- rendering and text ---------------------------------------------------------------


def render_scene(scene: Scene) -> Image.Image:
    """The RGB image of a scene: background, shapes in order (later in front), then the word."""
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUND_RGB[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_shape(draw, obj.kind, obj.box, COLOUR_RGB[obj.colour])
    if scene.word is not None:
        font = _font()
        dx, dy, _, _ = _word_ink(scene.word.text, font)
        x, y = scene.word.box[0] - dx, scene.word.box[1] - dy
        draw.text((x, y), scene.word.text, font=font, fill=TEXT_RGB[scene.word.colour])
    return image


def plural(noun: str) -> str:
    """English plural of the last word ("red circle" -> "red circles")."""
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def count_phrase(count: int, noun: str) -> str:
    """ "no circles", "a red circle", "two red circles" (digits above ten)."""
    if count == 1:
        return with_article(noun)
    number = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)
    return f"{number} {plural(noun)}"


def join_words(parts: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def position_phrase(position: str) -> str:
    """ "at the top left", "in the center"."""
    return "in the center" if position == "center" else f"at the {position}"


def caption(scene: Scene) -> str:
    """Short caption: categories by count, then first appearance ("two red circles and a blue square")."""
    counts = scene.counts()
    first = {}
    for i, obj in enumerate(scene.objects):
        first.setdefault(obj.category, i)
    groups = sorted(counts, key=lambda c: (-counts[c], first[c]))
    parts = [count_phrase(counts[c], c) for c in groups]
    if scene.word is not None:
        parts.append(f'the word "{scene.word.text}"')
    return join_words(parts)


def reading_order(scene: Scene) -> list[int]:
    """Object indices sorted by grid cell (rows top to bottom, then columns), then by x, y."""

    def key(i: int) -> tuple:
        obj = scene.objects[i]
        cx, cy = obj.centre
        row, col = min(2, int(3 * cy / scene.height)), min(2, int(3 * cx / scene.width))
        return row, col, cx, cy

    return sorted(range(len(scene.objects)), key=key)


def describe(scene: Scene) -> str:
    """Detailed description: every object (size, colour, kind, position), overlaps, the word."""
    n = len(scene.objects)
    objects = "one object" if n == 1 else count_phrase(n, "object")
    sentences = [f"There {'is' if n == 1 else 'are'} {objects} on a {scene.background} background."]
    for i in reading_order(scene):
        obj = scene.objects[i]
        phrase = with_article(f"{obj.size} {obj.colour} {obj.kind}")
        sentences.append(f"{phrase[0].upper()}{phrase[1:]} is {position_phrase(obj.position)}.")
    for i, j in overlapping_pairs(scene):
        back, front = scene.objects[i], scene.objects[j]
        sentences.append(
            f"The {front.size} {front.category} overlaps the {back.size} {back.category} and is in front of it."
        )
    if scene.word is not None:
        sentences.append(f'The word "{scene.word.text}" is written {position_phrase(scene.word.position)}.')
    else:
        sentences.append("There is no text in the image.")
    return " ".join(sentences)


# --- files ----------------------------------------------------------------------------


def _write_jsonl(path: Path, scenes: Iterable[Scene]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for scene in scenes:
            handle.write(json.dumps(scene.to_dict(), ensure_ascii=False) + "\n")


def load_scenes(path: str | Path) -> list[Scene]:
    """Read a scenes_*.jsonl file; a missing file or a bad line raises `DataError` naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: make the world with `llavakit data synth` first")
    scenes = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                scenes.append(Scene.from_dict(json.loads(line.decode("utf-8"))))
            except (ValueError, RecursionError) as err:  # JSON, UTF-8 and record errors are all ValueErrors
                raise DataError(f"{path}:{number}: {err}") from err
    return scenes


def write_world(
    out_dir: str | Path, n: int, seed: int | None = None, test_fraction: float = 0.2, config: WorldConfig | None = None
) -> WorldManifest:
    """Render `n` scenes into `out_dir`: images/*.png, scenes_train.jsonl, scenes_test.jsonl, world.json.

    `n` and `test_fraction` must leave at least one training and one test scene (`check_split`).
    """
    check_split(n, test_fraction)
    config = config or WorldConfig()
    seed = config.seed if seed is None else seed
    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    scenes = generate_world(n, seed, config)
    train, test = split_scenes(scenes, test_fraction, seed)
    for scene in scenes:
        render_scene(scene).save(root / scene.image, format="PNG")
    manifest = WorldManifest(
        root, images_dir, root / "scenes_train.jsonl", root / "scenes_test.jsonl", len(train), len(test), seed, config
    )
    _write_jsonl(manifest.train_path, train)
    _write_jsonl(manifest.test_path, test)
    (root / "world.json").write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    return manifest
