"""Instruction data and evaluation sets: LLaVA format, answers that match the scenes."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from llavakit.eval.baselines import chance_accuracy, majority_accuracy
from llavakit.synthetic.documents import build_documents, build_text_corpus
from llavakit.synthetic.instruct import (
    BRIEF_INSTRUCTIONS,
    DETAIL_INSTRUCTIONS,
    INSTRUCT_KINDS,
    POPE_STRATEGIES,
    SHORT_ANSWER_PROMPT,
    WorldStats,
    build_eval_sets,
    build_instruct_data,
    build_pretrain_data,
    write_instruct_files,
)
from llavakit.synthetic.world import (
    COLOUR_RGB,
    KINDS,
    SIZES,
    Scene,
    WorldConfig,
    caption,
    describe,
    generate_world,
    load_scenes,
    split_scenes,
    write_world,
)

CONFIG = WorldConfig(text_prob=0.5, highres_prob=0.1)
COLOURS = "|".join(COLOUR_RGB)
REF = re.compile(rf"^the (?:({'|'.join(SIZES)}) )?(?:({COLOURS}) )?({'|'.join(KINDS)}|object)(?: (?:at|in) the (.+))?$")


@pytest.fixture(scope="module")
def world() -> tuple[list[Scene], list[Scene]]:
    return split_scenes(generate_world(250, seed=7, config=CONFIG), 0.4, seed=7)


@pytest.fixture(scope="module")
def instruct(world) -> list[dict]:
    return build_instruct_data(world[0], seed=1)


@pytest.fixture(scope="module")
def eval_sets(world) -> dict[str, list[dict]]:
    return build_eval_sets(world[1], seed=1)


def _scene_of(scenes: list[Scene]) -> dict[str, Scene]:
    return {s.image: s for s in scenes}


def _resolve(scene: Scene, ref: str) -> list[int]:
    """Objects matching a referring phrase, parsed independently of the generator."""
    match = REF.match(ref)
    assert match, ref
    size, colour, kind, position = match.groups()
    return [
        i
        for i, o in enumerate(scene.objects)
        if (size is None or o.size == size)
        and (colour is None or o.colour == colour)
        and (kind == "object" or o.kind == kind)
        and (position is None or o.position == position)
    ]


def _expected_count(scene: Scene, what: str) -> int:
    """`what` is "objects", "red objects", "circles" or "red circles"."""
    words = what.split()
    if words == ["objects"]:
        return len(scene.objects)
    if words[-1] == "objects":
        return sum(o.colour == words[0] for o in scene.objects)
    kind = words[-1][:-1]
    colour = words[0] if len(words) == 2 else None
    return sum(o.kind == kind and (colour is None or o.colour == colour) for o in scene.objects)


def _short_answer_ok(scene: Scene, question: str, answer: str) -> bool:
    """Check one short-answer question against the scene; raise if the template is unknown."""
    if m := re.fullmatch(r"(What colour is|What shape is|What size is|Where is) (the .+?)( in the image)?\?", question):
        targets = _resolve(scene, m.group(2))
        assert len(targets) == 1, (scene.id, question)
        obj = scene.objects[targets[0]]
        attribute = {
            "What colour is": "colour",
            "What shape is": "kind",
            "What size is": "size",
            "Where is": "position",
        }[m.group(1)]
        return getattr(obj, attribute) == answer
    if m := re.fullmatch(r"How many (.+) are there in the image\?", question):
        return answer == str(_expected_count(scene, m.group(1)))
    if question == "What word is written in the image?":
        return scene.word is not None and answer == scene.word.text
    if m := re.fullmatch(r"What is the object in region \[(.+)\]\?", question):
        targets = _objects_in_box(scene, [float(v) for v in m.group(1).split(", ")])
        return len(targets) == 1 and scene.objects[targets[0]].category == answer
    if m := re.fullmatch(
        r"Please provide the bounding box coordinate of the region this sentence describes: (.+)\.", question
    ):
        targets = _resolve(scene, m.group(1))
        assert len(targets) == 1
        return _objects_in_box(scene, [float(v) for v in answer.strip("[]").split(", ")]) == targets
    if m := re.fullmatch(r"Is there an? (.+) in the image\?", question):
        return answer == ("yes" if m.group(1) in scene.counts() else "no")
    raise AssertionError(f"unknown question template: {question!r}")


def _objects_in_box(scene: Scene, box: list[float]) -> list[int]:
    out = []
    for i, o in enumerate(scene.objects):
        x, y, w, h = o.box
        exact = [x / scene.width, y / scene.height, (x + w) / scene.width, (y + h) / scene.height]
        if all(abs(a - b) <= 0.005 + 1e-9 for a, b in zip(box, exact)):
            out.append(i)
    return out


def test_samples_are_llava_format(world, instruct):
    pretrain = build_pretrain_data(world[0], seed=1)
    placements = Counter()
    for sample in pretrain + instruct:
        turns = sample["conversations"]
        assert set(sample) == {"id", "image", "conversations"}
        assert len(turns) >= 2 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count("<image>") for t in turns) == 1
        first = turns[0]["value"]
        assert first.startswith("<image>\n") or first.endswith("\n<image>")
        placements[first.startswith("<image>")] += 1
    assert placements[True] > 100 and placements[False] > 100
    assert len({s["id"] for s in instruct}) == len(instruct)
    scenes = _scene_of(world[0])
    for sample in pretrain:
        question = sample["conversations"][0]["value"].replace("<image>", "").strip()
        assert question in BRIEF_INSTRUCTIONS
        assert sample["conversations"][1]["value"] == caption(scenes[sample["image"]])
    assert len({s["conversations"][0]["value"].replace("<image>", "").strip() for s in pretrain}) == 11
    kinds = Counter(s["id"].split("-", 1)[1] for s in instruct)
    assert set(kinds) == set(INSTRUCT_KINDS)
    assert kinds["detail"] == len(world[0]) and 0 < kinds["ocr"] < len(world[0])


def test_instruct_answers_match_scenes(world, instruct):
    scenes = _scene_of(world[0])
    checked = Counter()
    for sample in instruct:
        scene, kind = scenes[sample["image"]], sample["id"].split("-", 1)[1]
        turns = sample["conversations"]
        pairs = [
            (turns[k]["value"].replace("<image>", "").strip(), turns[k + 1]["value"]) for k in range(0, len(turns), 2)
        ]
        if kind == "detail":
            assert pairs[0][0] in DETAIL_INSTRUCTIONS and pairs[0][1] == describe(scene)
        elif kind in ("vqa", "counting", "ocr", "region", "pope"):
            for question, answer in pairs:
                assert question.endswith("\n" + SHORT_ANSWER_PROMPT)
                assert _short_answer_ok(scene, question[: -len(SHORT_ANSWER_PROMPT) - 1], answer), (sample, question)
                checked[kind] += 1
            if kind == "pope":
                assert sorted(a for _, a in pairs) == ["no", "yes"]
        elif kind == "reasoning":
            checked[_check_reasoning(scene, *pairs[0])] += 1
        elif kind == "conversation":
            for question, answer in pairs:
                if m := re.fullmatch(r"Is there an? (.+) in the image\?", question):
                    assert answer.startswith("Yes" if m.group(1) in scene.counts() else "No")
                    checked["presence"] += 1
    assert min(checked[k] for k in ("vqa", "counting", "ocr", "region", "pope")) > 50
    assert checked["remove"] > 5 and checked["more"] > 5 and checked["corner"] > 5 and checked["presence"] > 20


_NUMBERS = ["zero", "one", "two", "three", "four", "five"]


def _check_reasoning(scene: Scene, question: str, answer: str) -> str:
    if m := re.fullmatch(r"If all the (\w+) objects were removed, how many objects would be left\?", question):
        left = sum(o.colour != m.group(1) for o in scene.objects)
        expected = {0: "no objects", 1: "one object"}.get(left, f"{_NUMBERS[left]} objects")
        assert answer.endswith(f"so {expected} would be left."), (question, answer)
        return "remove"
    if m := re.fullmatch(r"Are there more (\w+)s than (\w+)s in the image\?", question):
        kinds = Counter(o.kind for o in scene.objects)
        assert answer.startswith("Yes." if kinds[m.group(1)] > kinds[m.group(2)] else "No."), (question, answer)
        return "more"
    if m := re.fullmatch(
        r"Which object is closest to the (\w+) (\w+) corner of the image, and what colour is it\?", question
    ):
        cx = 0 if m.group(2) == "left" else scene.width
        cy = 0 if m.group(1) == "top" else scene.height
        nearest = min(scene.objects, key=lambda o: (o.centre[0] - cx) ** 2 + (o.centre[1] - cy) ** 2)
        assert answer.endswith(f"its colour is {nearest.colour}."), (question, answer)
        return "corner"
    return "other"


def test_eval_answers_match_scenes(world, eval_sets):
    scenes = _scene_of(world[1])
    assert set(eval_sets) == {"vqa", "counting", "ocr", "region", "pope"}
    for name, questions in eval_sets.items():
        assert questions, name
        assert len({q["id"] for q in questions}) == len(questions)
        for q in questions:
            assert {"id", "image", "question", "prompt", "answer", "category", "num_choices"} <= set(q)
            assert q["prompt"] == f"{q['question']}\n{SHORT_ANSWER_PROMPT}"
            assert _short_answer_ok(scenes[q["image"]], q["question"], q["answer"]), q
            if "target" in q and q["category"] == "region":
                assert scenes[q["image"]].objects[q["target"]].category == q["answer"]
    counts = [int(q["answer"]) for q in eval_sets["counting"]]
    assert min(counts) == 1 and max(counts) == 5
    assert {q["category"] for q in eval_sets["vqa"]} == {"colour", "shape", "size", "position"}


def test_pope_is_balanced_and_negatives_are_absent(world, eval_sets):
    scenes = _scene_of(world[1])
    groups: dict[tuple[str, str], list[dict]] = {}
    for q in eval_sets["pope"]:
        groups.setdefault((q["image"], q["strategy"]), []).append(q)
    assert {strategy for _, strategy in groups} == set(POPE_STRATEGIES)
    for (image, _strategy), questions in groups.items():
        present = scenes[image].counts()
        answers = Counter(q["answer"] for q in questions)
        assert answers["yes"] == answers["no"] == min(3, len(present))
        for q in questions:
            assert (q["object"] in present) == (q["answer"] == "yes")
    positives = {}
    for (image, _strategy), questions in groups.items():
        positives.setdefault(image, set()).add(frozenset(q["object"] for q in questions if q["answer"] == "yes"))
    assert all(len(v) == 1 for v in positives.values())  # same positives for every strategy
    assert chance_accuracy(eval_sets["pope"]) == 0.5 and majority_accuracy(eval_sets["pope"]) == 0.5


def test_pope_strategies_follow_their_definitions(world, eval_sets):
    test = world[1]
    # statistics recomputed here from the scenes, independently of WorldStats
    frequency = Counter(c for s in test for c in s.counts())
    pair = Counter((a, b) for s in test for a in s.counts() for b in s.counts() if a != b)
    universe = set(frequency)
    scenes = _scene_of(test)
    negatives: dict[str, list[tuple[str, set[str], set[str]]]] = {s: [] for s in POPE_STRATEGIES}
    by_group: dict[tuple[str, str], set[str]] = {}
    for q in eval_sets["pope"]:
        if q["answer"] == "no":
            by_group.setdefault((q["image"], q["strategy"]), set()).add(q["object"])
    for (image, strategy), chosen in by_group.items():
        present = set(scenes[image].counts())
        negatives[strategy].append((image, present, chosen))

    def score(present, c):
        return sum(pair[(p, c)] for p in present)

    for _image, present, chosen in negatives["popular"]:
        rest = universe - present - chosen
        assert min(frequency[c] for c in chosen) >= max((frequency[c] for c in rest), default=0)
    for _image, present, chosen in negatives["adversarial"]:
        rest = universe - present - chosen
        assert min(score(present, c) for c in chosen) >= max((score(present, c) for c in rest), default=0)

    def mean(strategy, f):
        values = [f(present, c) for _, present, chosen in negatives[strategy] for c in chosen]
        return sum(values) / len(values)

    def freq(present, c):
        return frequency[c]

    assert mean("popular", freq) > mean("random", freq) * 1.5
    assert mean("adversarial", score) > mean("random", score) * 1.5
    assert mean("adversarial", score) > mean("popular", score)
    differ = sum(a[2] != b[2] for a, b in zip(negatives["random"], negatives["popular"]))
    assert differ > 0.8 * len(negatives["random"])


def test_chance_levels(eval_sets):
    assert chance_accuracy(eval_sets["counting"]) == pytest.approx(1 / 5)
    by_category = {
        c: [q for q in eval_sets["vqa"] if q["category"] == c] for c in ("colour", "shape", "size", "position")
    }
    assert chance_accuracy(by_category["colour"]) == pytest.approx(1 / 6)
    assert chance_accuracy(by_category["shape"]) == pytest.approx(1 / 4)
    assert chance_accuracy(by_category["size"]) == pytest.approx(1 / 3)
    assert chance_accuracy(by_category["position"]) == pytest.approx(1 / 9)
    toy = [
        {"category": "a", "answer": "1", "num_choices": 4},
        {"category": "a", "answer": "1", "num_choices": 4},
        {"category": "a", "answer": "2", "num_choices": 4},
        {"category": "b", "answer": "x", "num_choices": 2},
    ]
    assert majority_accuracy(toy) == pytest.approx(3 / 4) and chance_accuracy(toy) == pytest.approx(0.3125)


def test_stats_and_errors(world):
    stats = WorldStats.from_scenes(world[0])
    assert len(stats.categories) == 24 and stats.max_count["category"] == 5
    with pytest.raises(ValueError, match="unknown instruction kinds"):
        build_instruct_data(world[0][:2], kinds=("caption",))
    with pytest.raises(ValueError, match="appears twice"):
        build_instruct_data([world[0][0], world[0][0]])
    with pytest.raises(ValueError, match="no id or image"):
        build_pretrain_data([Scene(64, 64, "white", world[0][0].objects)])


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_are_deterministic(tmp_path, world):
    assert build_instruct_data(world[0], seed=1) == build_instruct_data(world[0], seed=1)
    assert build_instruct_data(world[0], seed=1) != build_instruct_data(world[0], seed=2)
    write_world(tmp_path / "world", n=80, seed=3, config=CONFIG)
    first = write_instruct_files(tmp_path / "world", seed=3)
    second = write_instruct_files(tmp_path / "world", tmp_path / "again", seed=3)
    evals = {"eval_vqa", "eval_counting", "eval_ocr", "eval_region", "eval_pope"}
    assert set(first) == {"pretrain", "instruct", "documents", "text", *evals}
    assert {k: _digest(p) for k, p in first.items()} == {k: _digest(p) for k, p in second.items()}
    data = json.loads(first["instruct"].read_text())
    assert all((tmp_path / "world" / s["image"]).is_file() for s in data)
    pope = [json.loads(line) for line in first["eval_pope"].read_text().splitlines()]
    assert {q["strategy"] for q in pope} == set(POPE_STRATEGIES)


def test_500_scenes_and_their_data(tmp_path):
    """The demo's scale: one image per scene, the splits and the data complete.

    How long it takes (about 2 s) is measured by benchmarks/synthetic_world.py.
    """
    manifest = write_world(tmp_path, n=500, seed=0)
    paths = write_instruct_files(tmp_path, seed=0)
    assert manifest.n_train == 400 and len(json.loads(paths["pretrain"].read_text())) == 400
    assert manifest.n_test == 100
    scenes = load_scenes(manifest.train_path) + load_scenes(manifest.test_path)
    assert sorted(f"images/{p.name}" for p in manifest.images_dir.iterdir()) == sorted(s.image for s in scenes)


def test_documents_and_text_tell_each_training_scene_once(world):
    train = world[0]
    documents = build_documents(train, seed=0)
    images = [image for document in documents for image in document["images"] if image is not None]
    assert images == [scene.image for scene in train]  # every scene once, in order
    for document in documents:
        assert len(document["texts"]) == len(document["images"])
        assert all((text is None) != (image is None) for text, image in zip(document["texts"], document["images"]))
        assert 1 <= sum(image is not None for image in document["images"]) <= 3
    corpus = build_text_corpus(train)
    assert [record["text"] for record in corpus] == [f"A picture of {caption(s)}. {describe(s)}" for s in train]


def test_qa_conversations_ask_every_type_with_true_answers(world):
    """The demo's dense kind: short answers of many types per image, each one right for its scene."""
    scenes = _scene_of(world[0])
    samples = build_instruct_data(world[0], kinds=("qa",), seed=1, per_scene=2)
    assert [s["id"] for s in samples[:2]] == [f"{world[0][0].id}-qa", f"{world[0][0].id}-qa-1"]
    assert len(samples) == 2 * len(world[0])
    assert sum(a["conversations"] != b["conversations"] for a, b in zip(samples[::2], samples[1::2])) > 0.9 * len(
        world[0]
    )
    kinds_seen: Counter[str] = Counter()
    for sample in samples:
        scene = scenes[sample["image"]]
        turns = sample["conversations"]
        assert 2 <= len(turns) <= 16 and len(turns) % 2 == 0
        assert turns[0]["value"].count("<image>") == 1
        for question, answer in zip(turns[::2], turns[1::2]):
            text = question["value"].replace("<image>", "").strip()
            assert text.endswith(SHORT_ANSWER_PROMPT)
            if match := re.match(r"Is there an? (.+) in the image\?", text):
                kinds_seen["pope"] += 1
                assert answer["value"] == ("yes" if match[1] in scene.counts() else "no")
            elif match := re.match(r"How many (.+) are there in the image\?", text):
                kinds_seen["count"] += 1
                counted = sum(match[1] in (f"{o.colour} {o.kind}s", f"{o.kind}s") for o in scene.objects)
                assert answer["value"] == str(counted)
            elif text.startswith("What word is written"):
                kinds_seen["ocr"] += 1
                assert answer["value"] == scene.word.text
            elif text.startswith("Where is"):
                kinds_seen["position"] += 1
    assert min(kinds_seen.values()) > 50 and set(kinds_seen) == {"pope", "count", "ocr", "position"}
    with pytest.raises(ValueError, match="per_scene"):
        build_instruct_data(world[0][:2], kinds=("qa",), per_scene=0)
