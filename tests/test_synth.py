"""The synthetic world: exact ground truth, countable objects, byte-identical reruns."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavakit.errors import ConfigError
from llavakit.synthetic.world import (
    COLOUR_RGB,
    TEXT_RGB,
    Scene,
    SceneObject,
    SceneWord,
    WorldConfig,
    caption,
    check_split,
    describe,
    generate_scene,
    generate_world,
    is_one_piece,
    load_scenes,
    overlapping_pairs,
    render_scene,
    shape_mask,
    write_world,
)

MIXED = WorldConfig(highres_prob=0.2, text_prob=0.5)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return generate_world(300, seed=11, config=MIXED)


def _components(mask: np.ndarray) -> int:
    """Number of 4-connected pieces (an independent BFS, not the library's dilation)."""
    seen = np.zeros_like(mask)
    pieces = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        pieces += 1
        seen[start] = True
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return pieces


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="colours"):
        WorldConfig(colours=("red", "magenta"))
    with pytest.raises(ValueError, match="kinds"):
        WorldConfig(kinds=("hexagon",))
    with pytest.raises(ValueError, match="wider"):
        WorldConfig(words=("ABCDEFGHIJKL",))
    with pytest.raises(ValueError, match="min_objects"):
        WorldConfig(min_objects=3, max_objects=2)
    assert WorldConfig.from_dict(MIXED.to_dict()) == MIXED


def test_boxes_are_tight_and_inside(scenes):
    pixels = WorldConfig().size_pixels()
    assert pixels == {"small": 11, "medium": 15, "large": 19}  # round(0.16*64)|1, round(0.23*64)|1, ...
    for scene in scenes:
        for obj in scene.objects:
            x, y, w, h = obj.box
            assert x >= 0 and y >= 0 and x + w <= scene.width and y + h <= scene.height
            assert w == h == pixels[obj.size]  # same pixel sizes on 256 px canvases: small objects
            assert _tight_box(shape_mask(obj.kind, obj.box, scene.width, scene.height)) == obj.box
            cx, cy = obj.centre
            row = ("top", "middle", "bottom")[int(3 * cy // scene.height)]
            col = ("left", "center", "right")[int(3 * cx // scene.width)]
            assert obj.position == ("center" if (row, col) == ("middle", "center") else f"{row} {col}")
    assert {s.width for s in scenes} == {64, 256}


def test_pieces_of_each_colour_are_the_objects():
    """Counting connected pieces of a colour on the image gives exactly the ground-truth count
    (many scenes: without the one-piece rule about 1 colour in 150 breaks into slivers)."""
    for scene in generate_world(1500, seed=0):
        image = np.asarray(render_scene(scene))
        for colour in {o.colour for o in scene.objects}:
            painted = (image == COLOUR_RGB[colour]).all(-1)
            assert _components(painted) == sum(o.colour == colour for o in scene.objects), (scene.id, colour)


def test_rendered_pixels_match_ground_truth(scenes):
    for scene in scenes:
        image = np.asarray(render_scene(scene))
        assert image.shape == (scene.height, scene.width, 3)
        for colour in {o.colour for o in scene.objects}:
            painted = (image == COLOUR_RGB[colour]).all(-1)
            same = [o for o in scene.objects if o.colour == colour]
            assert _components(painted) == len(same), (scene.id, colour)
            for obj in same:  # at least 60% of every object is visible
                mask = shape_mask(obj.kind, obj.box, scene.width, scene.height)
                assert (painted & mask).sum() >= 0.6 * mask.sum(), (scene.id, obj)
        if scene.word is not None:
            ink = (image == TEXT_RGB[scene.word.colour]).all(-1)
            assert _tight_box(ink) == scene.word.box
            assert not any(_overlap(scene.word.box, o.box) for o in scene.objects)
    assert sum(s.word is not None for s in scenes) > 100


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_world_statistics_are_skewed_and_palette_grouped(scenes):
    counts = {}
    for scene in scenes:
        for category in scene.counts():
            counts[category] = counts.get(category, 0) + 1
    assert counts["red circle"] > 3 * counts.get("orange diamond", 0)
    multi = [s for s in scenes if len({o.colour for o in s.objects}) > 1]
    warm, cool = {"red", "orange", "yellow"}, {"blue", "green", "purple"}
    one_palette = [s for s in multi if {o.colour for o in s.objects} <= warm or {o.colour for o in s.objects} <= cool]
    assert len(one_palette) / len(multi) > 0.6
    per_category = [n for s in scenes for n in s.counts().values()]
    assert set(per_category) == {1, 2, 3, 4, 5}


def test_caption_and_description_by_hand():
    objects = (
        SceneObject("circle", "red", "small", (2, 2, 11, 11), "top left"),
        SceneObject("square", "blue", "large", (6, 6, 19, 19), "top left"),
        SceneObject("circle", "red", "medium", (40, 40, 15, 15), "bottom right"),
        SceneObject("triangle", "orange", "small", (40, 2, 11, 11), "top right"),
    )
    scene = Scene(64, 64, "white", objects, SceneWord("CAT", (30, 28, 17, 7), "center", "black"), "x", "images/x.png")
    assert caption(scene) == 'two red circles, a blue square, an orange triangle and the word "CAT"'
    assert overlapping_pairs(scene) == [(0, 1)]
    assert describe(scene) == (
        "There are four objects on a white background. A small red circle is at the top left. "
        "A large blue square is at the top left. A small orange triangle is at the top right. "
        "A medium red circle is at the bottom right. "
        "The large blue square overlaps the small red circle and is in front of it. "
        'The word "CAT" is written in the center.'
    )
    assert caption(dataclasses.replace(scene, objects=objects[:1], word=None)) == "a red circle"


def test_record_round_trip_and_errors(scenes):
    for scene in scenes[:50]:
        record = json.loads(json.dumps(scene.to_dict()))
        assert Scene.from_dict(record) == scene
        assert sum(record["counts"].values()) == len(record["objects"]) == len(scene.objects)
    record = scenes[0].to_dict()
    record["objects"][0]["box"] = [60, 60, 19, 19]
    with pytest.raises(ValueError, match=f"scene '{scenes[0].id}'.*outside"):
        Scene.from_dict(record)
    with pytest.raises(ValueError, match="malformed"):
        Scene.from_dict({"id": "q", "width": 64})
    record = scenes[0].to_dict()
    record["objects"][0]["colour"] = "magenta"
    with pytest.raises(ValueError, match="unknown colour 'magenta'"):
        Scene.from_dict(record)


def test_is_one_piece_agrees_with_bfs():
    rng = np.random.default_rng(0)
    for _ in range(300):
        mask = rng.random((7, 9)) < rng.uniform(0.3, 0.8)
        assert is_one_piece(mask) == (_components(mask) == 1)
    assert not is_one_piece(np.zeros((3, 3), bool))


def test_generation_is_deterministic_and_prefix_stable():
    rng_a, rng_b = random.Random(5), random.Random(5)
    assert generate_scene(rng_a, MIXED) == generate_scene(rng_b, MIXED)
    assert generate_world(20, seed=2) == generate_world(40, seed=2)[:20]
    assert generate_world(20, seed=2) != generate_world(20, seed=3)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_write_world_is_byte_identical_and_split_by_image(tmp_path):
    first = write_world(tmp_path / "a", n=60, seed=4, test_fraction=0.25, config=MIXED)
    write_world(tmp_path / "b", n=60, seed=4, test_fraction=0.25, config=MIXED)
    write_world(tmp_path / "c", n=60, seed=5, test_fraction=0.25, config=MIXED)
    hashes = _hashes(tmp_path / "a")
    assert len(hashes) == 60 + 3
    assert hashes == _hashes(tmp_path / "b")
    assert hashes != _hashes(tmp_path / "c")

    train, test = load_scenes(first.train_path), load_scenes(first.test_path)
    assert (first.n_train, first.n_test) == (len(train), len(test)) == (45, 15)
    assert not {s.image for s in train} & {s.image for s in test}
    assert sorted(s.id for s in train + test) == [f"{i:06d}" for i in range(60)]
    for scene in test[:5]:
        on_disk = np.asarray(Image.open(first.root / scene.image).convert("RGB"))
        assert (on_disk == np.asarray(render_scene(scene))).all()
    saved = json.loads((first.root / "world.json").read_text())
    assert WorldConfig.from_dict(saved["config"]) == MIXED and saved["seed"] == 4


def test_load_scenes_names_bad_line(tmp_path):
    path = tmp_path / "scenes.jsonl"
    path.write_text(json.dumps(generate_world(1)[0].to_dict()) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"scenes.jsonl:2"):
        load_scenes(path)


def test_a_world_keeps_at_least_one_training_and_one_test_scene(tmp_path):
    for n, fraction in [(2, 0.5), (10, 0.1), (10, 0.9), (1000, 0.2)]:
        check_split(n, fraction)  # round(n * fraction) in 1 .. n - 1
    refused = {
        (1, 0.5): "at least 2 scenes",
        (0, 0.2): "at least 2 scenes",
        (10, 1.0): "strictly between 0 and 1",
        (10, 0.0): "strictly between 0 and 1",
        (10, float("nan")): "strictly between 0 and 1",
        (10, 0.05): "leaves no test scene",  # round(0.5) == 0, as split_scenes rounds
        (10, 0.96): "leaves no training scene",
    }
    for (n, fraction), message in refused.items():
        with pytest.raises(ConfigError, match=message):
            check_split(n, fraction)
    with pytest.raises(ConfigError, match="test_fraction=1.0"):
        write_world(tmp_path / "w", n=5, test_fraction=1.0)
    assert not (tmp_path / "w").exists()
