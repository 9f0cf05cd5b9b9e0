"""Offline instruction data and evaluation sets from the synthetic world's ground truth.

Why: LLaVA's recipe needs caption pairs (stage 1), instruction-following data (stage 2)
and benchmarks with known answers. Here a text-only "teacher" is replaced by templates
filled from exact scene records, so every answer is right by construction and the whole
pipeline runs offline in seconds.

    from llavakit.synthetic.instruct import write_instruct_files
    write_instruct_files("runs/world", seed=0)  # pretrain.json, instruct.json, eval_*.jsonl

Sample kinds (`build_instruct_data(kinds=...)`), all in LLaVA's format
`{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}`
with `<image>` before or after the first question at random:

- `conversation`: 2-4 natural questions about kinds, colours, counts, positions, text;
- `detail`: a detailed-description instruction answered with `synth.describe`;
- `reasoning`: one question needing a short chain (closest object to a corner, more X
  than Y, what is left after removing a colour, left/right, which one is in front, ...);
- `vqa`, `counting`, `ocr`, `region`, `pope`: academic short answers, each question
  followed by the response-format prompt "Answer the question using a single word or
  phrase." Region boxes are normalized `[x1, y1, x2, y2]` with 2 decimals.
- `qa` (not in the default file): up to 8 of those short answers, of every type, in one
  conversation per image, as LLaVA-1.5 merges an image's VQA questions; the demo trains on it.

POPE and counting use **category = colour + kind** ("red circle"): with the default world
that is 24 categories (only 4 kinds would leave too few absent ones to sample negatives
from). Negatives (always absent from the image) follow POPE's three strategies:
`random` (uniform over absent categories), `popular` (absent categories in the most
images of the reference scenes), `adversarial` (absent categories that co-occur most
often with the present ones, summed over the present ones). Ties break by frequency,
then name, so the choice is exact and testable.

Evaluation sets (`build_eval_sets`): each question has `id`, `image`, `question`,
`prompt` (question + response-format line, exactly as in training), `answer`,
`category` (the question type), `num_choices` (how many answers a uniform guesser picks
from), and where it applies `target` (object index), `object` (the category asked) and
`strategy` (POPE). Chance levels with the default world, from `chance_accuracy`:

| set / category | answer space | chance |
|---|---|---|
| vqa: colour / shape / size / position | 6 colours / 4 kinds / 3 sizes / 9 cells | 17% / 25% / 33% / 11% |
| counting (present categories or kinds) | 1..5 | 20% |
| ocr | 12 words | 8% |
| region | 24 categories | 4% |
| pope (balanced yes/no per image and strategy) | yes, no | 50% |

`majority_accuracy` gives the stronger always-answer-the-most-common baseline, since
counts and sizes are not uniform.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from llavakit.errors import DataError, OutputExistsError
from llavakit.output_paths import check_writable_dir
from llavakit.synthetic.documents import build_documents, build_text_corpus
from llavakit.synthetic.world import (
    COLUMNS,
    ROWS,
    SIZES,
    Scene,
    caption,
    count_phrase,
    describe,
    join_words,
    load_scenes,
    overlapping_pairs,
    plural,
    position_phrase,
    with_article,
)

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
BRIEF_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the picture's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the picture.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)
DETAIL_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the following image in detail.",
    "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.",
    "Share a comprehensive rundown of the presented image.",
    "Offer a thorough analysis of the image.",
    "Explain the various aspects of the image before you.",
    "Clarify the contents of the displayed image with great detail.",
    "Characterize the image using a well-detailed description.",
    "Break down the elements of the image in a detailed manner.",
    "Walk through the important details of the image.",
)
INSTRUCT_KINDS: tuple[str, ...] = ("conversation", "detail", "reasoning", "vqa", "counting", "ocr", "region", "pope")
POPE_STRATEGIES: tuple[str, ...] = ("random", "popular", "adversarial")
EVAL_SETS: tuple[str, ...] = ("vqa", "counting", "ocr", "region", "pope")
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class QA:
    """One question with its exact answer and what a grader needs to know about it."""

    question: str
    answer: str
    category: str = ""
    num_choices: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorldStats:
    """Vocabulary and category statistics of a set of scenes (answer spaces, POPE sampling)."""

    categories: tuple[str, ...]
    kinds: tuple[str, ...]
    colours: tuple[str, ...]
    positions: tuple[str, ...]
    words: tuple[str, ...]
    frequency: Counter[str]  # number of images containing each category
    cooccurrence: dict[str, Counter[str]]  # images containing both categories
    max_count: dict[str, int]  # largest count per counting question type

    @classmethod
    def from_scenes(cls, scenes: Iterable[Scene]) -> WorldStats:
        frequency: Counter[str] = Counter()
        cooccurrence: dict[str, Counter[str]] = {}
        kinds, colours, positions, words = set(), set(), set(), set()
        max_count = {"category": 1, "kind": 1, "colour": 1, "total": 1}
        for scene in scenes:
            present = sorted(scene.counts())
            frequency.update(present)
            for a in present:
                cooccurrence.setdefault(a, Counter()).update(b for b in present if b != a)
            kinds.update(o.kind for o in scene.objects)
            colours.update(o.colour for o in scene.objects)
            positions.update(o.position for o in scene.objects)
            if scene.word:
                words.add(scene.word.text)
            for name, counts in _count_tables(scene).items():
                if counts:
                    max_count[name] = max(max_count[name], max(counts.values()))
        return cls(
            tuple(sorted(frequency)),
            tuple(sorted(kinds)),
            tuple(sorted(colours)),
            tuple(sorted(positions)),
            tuple(sorted(words)),
            frequency,
            cooccurrence,
            max_count,
        )


def _count_tables(scene: Scene) -> dict[str, Counter[str]]:
    return {
        "category": scene.counts(),
        "kind": Counter(o.kind for o in scene.objects),
        "colour": Counter(o.colour for o in scene.objects),
        "total": Counter({"object": len(scene.objects)}),
    }


# --- referring to objects ---------------------------------------------------------------

_ATTRIBUTES = ("kind", "colour", "size", "position")


def referring_expression(scene: Scene, index: int, exclude: str | None = None) -> str | None:
    """The shortest phrase ("the red circle", "the object at the top left") that picks out
    exactly object `index`, not using attribute `exclude`; None if none does."""
    target = scene.objects[index]
    allowed = [a for a in _ATTRIBUTES if a != exclude]
    for r in range(1, len(allowed) + 1):
        for attrs in combinations(allowed, r):
            matches = [o for o in scene.objects if all(getattr(o, a) == getattr(target, a) for a in attrs)]
            if len(matches) == 1:
                adjectives = [getattr(target, a) for a in ("size", "colour") if a in attrs]
                noun = target.kind if "kind" in attrs else "object"
                phrase = "the " + " ".join(adjectives + [noun])
                if "position" in attrs:
                    phrase += " " + position_phrase(target.position)
                return phrase
    return None


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _number(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def normalized_box(scene: Scene, index: int) -> str:
    """Object box as "[x1, y1, x2, y2]" in [0, 1] with 2 decimals (LLaVA-1.5's region format)."""
    x, y, w, h = scene.objects[index].box
    values = (x / scene.width, y / scene.height, (x + w) / scene.width, (y + h) / scene.height)
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def _shuffled(rng: random.Random, items: Iterable[Any]) -> list[Any]:
    items = list(items)
    rng.shuffle(items)
    return items


# --- short-answer questions ---------------------------------------------------------------


QAMaker = Callable[[Scene, random.Random, WorldStats], "QA | None"]


def _attribute_qa(attribute: str, category: str, template: str, answer_space: Callable[[WorldStats], int]) -> QAMaker:
    """A maker of "What <attribute> is <phrase naming one object without it>?" questions."""

    def make(scene: Scene, rng: random.Random, stats: WorldStats) -> QA | None:
        for i in _shuffled(rng, range(len(scene.objects))):
            ref = referring_expression(scene, i, exclude=attribute)
            if ref is not None:
                answer = getattr(scene.objects[i], attribute)
                return QA(template.format(ref=ref), answer, category, answer_space(stats), {"target": i})
        return None

    return make


VQA_QUESTIONS: dict[str, QAMaker] = {
    "colour": _attribute_qa("colour", "colour", "What colour is {ref}?", lambda s: len(s.colours)),
    "shape": _attribute_qa("kind", "shape", "What shape is {ref}?", lambda s: len(s.kinds)),
    "size": _attribute_qa("size", "size", "What size is {ref}?", lambda s: len(SIZES)),
    "position": _attribute_qa("position", "position", "Where is {ref} in the image?", lambda s: len(s.positions)),
}


def counting_qa(
    scene: Scene, rng: random.Random, stats: WorldStats, by: str = "category", absent_prob: float = 0.0
) -> QA | None:
    """ "How many red circles are there in the image?" -> "2" (digits, as in VQAv2)."""
    counts = _count_tables(scene)[by]
    universe = {"category": stats.categories, "kind": stats.kinds, "colour": stats.colours}.get(by, ())
    absent = sorted(set(universe) - set(counts))
    name = rng.choice(absent) if absent and rng.random() < absent_prob else rng.choice(sorted(counts))
    if by == "total":
        question = "How many objects are there in the image?"
    elif by == "colour":
        question = f"How many {name} objects are there in the image?"
    else:
        question = f"How many {plural(name)} are there in the image?"
    return QA(question, str(counts.get(name, 0)), f"count_{by}", stats.max_count[by], {"object": name})


def ocr_qa(scene: Scene, rng: random.Random, stats: WorldStats) -> QA | None:
    if scene.word is None:
        return None
    return QA("What word is written in the image?", scene.word.text, "ocr", max(1, len(stats.words)))


def _distinct_boxes(scene: Scene) -> list[int]:
    boxes = Counter(normalized_box(scene, i) for i in range(len(scene.objects)))
    return [i for i in range(len(scene.objects)) if boxes[normalized_box(scene, i)] == 1]


def region_qa(scene: Scene, rng: random.Random, stats: WorldStats) -> QA | None:
    """ "What is the object in region [x1, y1, x2, y2]?" -> "red circle"."""
    candidates = _distinct_boxes(scene)
    if not candidates:
        return None
    i = rng.choice(candidates)
    return QA(
        f"What is the object in region {normalized_box(scene, i)}?",
        scene.objects[i].category,
        "region",
        len(stats.categories),
        {"target": i},
    )


def grounding_qa(scene: Scene, rng: random.Random, stats: WorldStats) -> QA | None:
    """The reverse region task: a referring phrase -> its normalized box."""
    for i in _shuffled(rng, range(len(scene.objects))):
        ref = referring_expression(scene, i)
        if ref is not None:
            question = f"Please provide the bounding box coordinate of the region this sentence describes: {ref}."
            return QA(question, normalized_box(scene, i), "grounding", 0, {"target": i})
    return None


def pope_negatives(present: Iterable[str], stats: WorldStats, strategy: str, k: int, rng: random.Random) -> list[str]:
    """`k` categories absent from an image, chosen by POPE strategy `strategy`."""
    present = set(present)
    absent = sorted(set(stats.categories) - present)
    if strategy == "random":
        return rng.sample(absent, min(k, len(absent)))
    if strategy == "popular":
        return sorted(absent, key=lambda c: (-stats.frequency[c], c))[:k]
    if strategy == "adversarial":

        def score(c: str) -> int:
            return sum(stats.cooccurrence.get(p, Counter())[c] for p in present)

        return sorted(absent, key=lambda c: (-score(c), -stats.frequency[c], c))[:k]
    raise ValueError(f"unknown POPE strategy {strategy!r}; use one of {POPE_STRATEGIES}")


def pope_qa(category: str, present: bool, strategy: str) -> QA:
    return QA(
        f"Is there {with_article(category)} in the image?",
        "yes" if present else "no",
        "pope",
        2,
        {"object": category, "strategy": strategy},
    )


# --- conversation and reasoning -------------------------------------------------------------

Turn = tuple[str, str]
TurnMaker = Callable[[Scene, random.Random, WorldStats], "Turn | None"]


def _conv_shapes(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn:
    kinds = Counter(o.kind for o in scene.objects)
    order = list(dict.fromkeys(o.kind for o in scene.objects))
    return (
        "What shapes can you see in the image?",
        f"I can see {join_words([count_phrase(kinds[k], k) for k in order])}.",
    )


def _conv_total(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn:
    n = len(scene.objects)
    return "How many objects are there in the image?", (
        "There is one object in the image." if n == 1 else f"There are {_number(n)} objects in the image."
    )


def _conv_attribute(attribute: str, question: str, answer: str) -> TurnMaker:
    def make(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn | None:
        for i in _shuffled(rng, range(len(scene.objects))):
            ref = referring_expression(scene, i, exclude=attribute)
            if ref is not None:
                obj = scene.objects[i]
                value = position_phrase(obj.position) if attribute == "position" else getattr(obj, attribute)
                return question.format(ref=ref), answer.format(Ref=_cap(ref), value=value)
        return None

    return make


def _conv_count(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn:
    qa = counting_qa(scene, rng, stats, "category", absent_prob=0.2)
    name, n = qa.extra["object"], int(qa.answer)
    answer = f"There is one {name}." if n == 1 else f"There are {count_phrase(n, name)}."
    return f"How many {plural(name)} are there?", answer


def _conv_presence(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn:
    counts = scene.counts()
    absent = sorted(set(stats.categories) - set(counts))
    if absent and rng.random() < 0.5:
        name = rng.choice(absent)
        return f"Is there {with_article(name)} in the image?", f"No, there is no {name} in the image."
    name = rng.choice(sorted(counts))
    if counts[name] == 1:
        obj = next(o for o in scene.objects if o.category == name)
        answer = f"Yes, there is {with_article(name)} {position_phrase(obj.position)}."
    else:
        answer = f"Yes, there are {count_phrase(counts[name], name)}."
    return f"Is there {with_article(name)} in the image?", answer


def _conv_background(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn:
    return "What colour is the background?", f"The background is {scene.background}."


def _conv_text(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn:
    if scene.word is None:
        return "Is there any text in the image?", "No, there is no text in the image."
    return "Is there any text in the image?", (
        f'Yes, the word "{scene.word.text}" is written {position_phrase(scene.word.position)}.'
    )


CONVERSATION_TURNS: tuple[TurnMaker, ...] = (
    _conv_shapes,
    _conv_total,
    _conv_attribute("colour", "What colour is {ref}?", "{Ref} is {value}."),
    _conv_attribute("position", "Where is {ref}?", "{Ref} is {value} of the image."),
    _conv_attribute("size", "How big is {ref}?", "{Ref} is {value}."),
    _conv_count,
    _conv_presence,
    _conv_background,
    _conv_text,
)


def _reason_corner(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn | None:
    if len(scene.objects) < 2:
        return None
    corners = {
        "top left": (0, 0),
        "top right": (scene.width, 0),
        "bottom left": (0, scene.height),
        "bottom right": (scene.width, scene.height),
    }
    for corner in _shuffled(rng, corners):
        cx, cy = corners[corner]
        dist = sorted(((o.centre[0] - cx) ** 2 + (o.centre[1] - cy) ** 2) ** 0.5 for o in scene.objects)
        if dist[1] - dist[0] < 2.0:
            continue  # no clear winner: skip rather than risk a wrong answer
        obj = min(scene.objects, key=lambda o: (o.centre[0] - cx) ** 2 + (o.centre[1] - cy) ** 2)
        return (
            f"Which object is closest to the {corner} corner of the image, and what colour is it?",
            f"The object closest to the {corner} corner is the {obj.size} {obj.category} "
            f"{position_phrase(obj.position)}, so its colour is {obj.colour}.",
        )
    return None


def _reason_more(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn | None:
    if len(stats.kinds) < 2:
        return None
    kinds = Counter(o.kind for o in scene.objects)
    a = rng.choice(sorted(kinds))
    b = rng.choice([k for k in stats.kinds if k != a])
    na, nb = kinds[a], kinds[b]
    verb = "is" if na == 1 else "are"
    if na > nb:
        verdict, relation = "Yes", f"more {plural(a)} than {plural(b)}"
    elif na < nb:
        verdict, relation = "No", f"fewer {plural(a)} than {plural(b)}"
    else:
        verdict, relation = "No", f"as many {plural(a)} as {plural(b)}"
    return (
        f"Are there more {plural(a)} than {plural(b)} in the image?",
        f"{verdict}. There {verb} {count_phrase(na, a)} and {count_phrase(nb, b)}, so there are {relation}.",
    )


def _reason_remove(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn:
    colours = Counter(o.colour for o in scene.objects)
    colour = rng.choice(sorted(colours))
    n, m = len(scene.objects), colours[colour]
    left = n - m
    total = "is one object" if n == 1 else f"are {_number(n)} objects"
    part = "it is" if n == 1 else ("all of them are" if m == n else f"{_number(m)} of them {'is' if m == 1 else 'are'}")
    rest = (
        "no objects would be left"
        if left == 0
        else ("one object would be left" if left == 1 else f"{_number(left)} objects would be left")
    )
    return (
        f"If all the {colour} objects were removed, how many objects would be left?",
        f"There {total} and {part} {colour}, so {rest}.",
    )


_SIDE = {
    "left": "on the left side of the image",
    "center": "in the middle of the image",
    "right": "on the right side of the image",
    "top": "in the upper part of the image",
    "middle": "in the middle of the image",
    "bottom": "in the lower part of the image",
}


def _grid(scene: Scene, i: int) -> tuple[str, str]:
    cx, cy = scene.objects[i].centre
    return ROWS[min(2, int(3 * cy / scene.height))], COLUMNS[min(2, int(3 * cx / scene.width))]


def _unique_category_objects(scene: Scene) -> list[int]:
    counts = scene.counts()
    return [i for i, o in enumerate(scene.objects) if counts[o.category] == 1]


def _reason_relative(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn | None:
    unique = _unique_category_objects(scene)
    pairs = _shuffled(rng, [(i, j) for i in unique for j in unique if i != j])
    for axis in _shuffled(rng, ("horizontal", "vertical")):
        k = 1 if axis == "horizontal" else 0
        for i, j in pairs:
            gi, gj = _grid(scene, i)[k], _grid(scene, j)[k]
            if gi == gj:
                continue
            a, b = scene.objects[i].category, scene.objects[j].category
            order = COLUMNS if k else ROWS
            if k:
                question = f"Is the {a} to the left or to the right of the {b}?"
                relation = "to the left of" if order.index(gi) < order.index(gj) else "to the right of"
            else:
                question = f"Is the {a} above or below the {b}?"
                relation = "above" if order.index(gi) < order.index(gj) else "below"
            return question, f"The {a} is {_SIDE[gi]} and the {b} is {_SIDE[gj]}, so the {a} is {relation} the {b}."
    return None


def _reason_front(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn | None:
    unique = set(_unique_category_objects(scene))
    pairs = [(i, j) for i, j in overlapping_pairs(scene) if i in unique and j in unique]
    if not pairs:
        return None
    back, front = (scene.objects[k].category for k in rng.choice(pairs))
    first, second = (back, front) if rng.random() < 0.5 else (front, back)
    return (
        f"The {first} and the {second} overlap. Which one is in front?",
        f"The {front} is in front: it covers part of the {back}.",
    )


def _reason_majority(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn | None:
    colours = Counter(o.colour for o in scene.objects).most_common()
    n = len(scene.objects)
    if n < 3 or (len(colours) > 1 and colours[0][1] == colours[1][1]):
        return None
    colour, m = colours[0]
    return (
        "What colour are most of the objects?",
        f"Most of the objects are {colour}: {_number(m)} of the {_number(n)} objects are {colour}.",
    )


def _reason_largest(scene: Scene, rng: random.Random, stats: WorldStats) -> Turn | None:
    ranks = [SIZES.index(o.size) for o in scene.objects]
    if len(ranks) < 2 or ranks.count(max(ranks)) != 1:
        return None
    obj = scene.objects[ranks.index(max(ranks))]
    return (
        "Which object is the largest, and where is it?",
        f"The largest object is the {obj.size} {obj.category}, which is {position_phrase(obj.position)} of the image.",
    )


REASONING_TURNS: tuple[TurnMaker, ...] = (
    _reason_corner,
    _reason_more,
    _reason_remove,
    _reason_relative,
    _reason_front,
    _reason_majority,
    _reason_largest,
)


# --- samples --------------------------------------------------------------------------------


def _short(qa: QA) -> Turn:
    return f"{qa.question}\n{SHORT_ANSWER_PROMPT}", qa.answer


def _pick_turns(makers: Sequence[TurnMaker], scene: Scene, rng: random.Random, stats: WorldStats, n: int) -> list[Turn]:
    turns = []
    for make in _shuffled(rng, makers):
        turn = make(scene, rng, stats)
        if turn is not None:
            turns.append(turn)
        if len(turns) == n:
            break
    return turns


def _turns_conversation(scene, rng, stats) -> list[Turn]:
    return _pick_turns(CONVERSATION_TURNS, scene, rng, stats, rng.randint(2, 4))


def _turns_detail(scene, rng, stats) -> list[Turn]:
    return [(rng.choice(DETAIL_INSTRUCTIONS), describe(scene))]


def _turns_reasoning(scene, rng, stats) -> list[Turn]:
    return _pick_turns(REASONING_TURNS, scene, rng, stats, 1)


def _turns_vqa(scene, rng, stats) -> list[Turn]:
    turns = []
    for name in _shuffled(rng, VQA_QUESTIONS)[: rng.randint(1, 3)]:
        qa = VQA_QUESTIONS[name](scene, rng, stats)
        if qa is not None:
            turns.append(_short(qa))
    return turns


def _turns_counting(scene, rng, stats) -> list[Turn]:
    kinds = _shuffled(rng, ("category", "kind", "colour", "total"))[: rng.randint(1, 2)]
    return [_short(counting_qa(scene, rng, stats, by, absent_prob=0.15)) for by in kinds]


def _turns_ocr(scene, rng, stats) -> list[Turn]:
    qa = ocr_qa(scene, rng, stats)
    return [_short(qa)] if qa else []


def _turns_region(scene, rng, stats) -> list[Turn]:
    turns = [_short(qa) for qa in (region_qa(scene, rng, stats), grounding_qa(scene, rng, stats)) if qa]
    return _shuffled(rng, turns)[: rng.randint(1, 2)]


def _pope_pair(scene: Scene, rng: random.Random, stats: WorldStats) -> list[QA]:
    """One present category and one absent one, asked under a random POPE strategy."""
    present = sorted(scene.counts())
    strategy = rng.choice(POPE_STRATEGIES)
    questions = [pope_qa(rng.choice(present), True, strategy)]
    return questions + [pope_qa(c, False, strategy) for c in pope_negatives(present, stats, strategy, 1, rng)]


def _turns_pope(scene, rng, stats) -> list[Turn]:
    return _shuffled(rng, [_short(qa) for qa in _pope_pair(scene, rng, stats)])


QA_TURNS = 8


def _turns_qa(scene, rng, stats) -> list[Turn]:
    """Up to `QA_TURNS` short answers of every type about one image, in one conversation.

    LLaVA-1.5 merges the short-answer questions of one image into one conversation; on a small
    budget that spends the image's tokens (and the system prompt) once for many supervised answers.
    """
    asked = [make(scene, rng, stats) for make in VQA_QUESTIONS.values()]
    asked += [counting_qa(scene, rng, stats, by, absent_prob=0.15) for by in ("category", "kind")]
    asked += [ocr_qa(scene, rng, stats), region_qa(scene, rng, stats)]
    questions = [qa for qa in asked if qa is not None] + _pope_pair(scene, rng, stats)
    return [_short(qa) for qa in _shuffled(rng, questions)[:QA_TURNS]]


SAMPLE_BUILDERS: dict[str, Callable[[Scene, random.Random, WorldStats], list[Turn]]] = {
    "conversation": _turns_conversation,
    "detail": _turns_detail,
    "reasoning": _turns_reasoning,
    "vqa": _turns_vqa,
    "counting": _turns_counting,
    "ocr": _turns_ocr,
    "region": _turns_region,
    "pope": _turns_pope,
    "qa": _turns_qa,
}


def to_sample(sample_id: str, image: str, turns: Sequence[Turn], rng: random.Random) -> dict[str, Any]:
    """LLaVA-format record; `<image>` goes before or after the first question at random."""
    conversations = []
    for k, (question, answer) in enumerate(turns):
        if k == 0:
            question = f"<image>\n{question}" if rng.random() < 0.5 else f"{question}\n<image>"
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": sample_id, "image": image, "conversations": conversations}


def _as_scenes(scenes: Iterable[Scene | dict]) -> list[Scene]:
    out = [s if isinstance(s, Scene) else Scene.from_dict(s) for s in scenes]
    seen: set[str] = set()
    for scene in out:
        if not scene.id or not scene.image:
            raise ValueError(f"scene {scene.id!r} has no id or image path; build scenes with synth.generate_world")
        if scene.id in seen:
            raise ValueError(f"scene id {scene.id!r} appears twice")
        seen.add(scene.id)
    return out


def build_pretrain_data(scenes: Iterable[Scene | dict], seed: int = 0) -> list[dict[str, Any]]:
    """Stage-1 caption pairs: a random brief-description instruction -> `synth.caption`."""
    samples = []
    for scene in _as_scenes(scenes):
        rng = random.Random(f"llavakit-pretrain:{seed}:{scene.id}")
        samples.append(to_sample(scene.id, scene.image, [(rng.choice(BRIEF_INSTRUCTIONS), caption(scene))], rng))
    return samples


def build_instruct_data(
    scenes: Iterable[Scene | dict],
    kinds: Sequence[str] = INSTRUCT_KINDS,
    seed: int = 0,
    stats: WorldStats | None = None,
    per_scene: int = 1,
) -> list[dict[str, Any]]:
    """Stage-2 samples: at most `per_scene` per (scene, kind), id "<scene id>-<kind>" (then "-<kind>-1", ...).

    A kind that does not apply to a scene (OCR without a word) is skipped for it.
    `stats` (default: from `scenes`) gives POPE negatives and absent categories.
    Each repeat draws its own questions (its own seed); the first is the single sample's.
    """
    if per_scene < 1:
        raise ValueError(f"per_scene must be at least 1, got {per_scene}")
    unknown = [k for k in kinds if k not in SAMPLE_BUILDERS]
    if unknown:
        raise ValueError(f"unknown instruction kinds {unknown}; known: {list(SAMPLE_BUILDERS)}")
    scenes = _as_scenes(scenes)
    stats = stats or WorldStats.from_scenes(scenes)
    samples = []
    for scene in scenes:
        for kind in kinds:
            for repeat in range(per_scene):
                suffix = f"-{repeat}" if repeat else ""
                rng = random.Random(f"llavakit-instruct:{seed}:{scene.id}:{kind}{suffix}")
                turns = SAMPLE_BUILDERS[kind](scene, rng, stats)
                if turns:
                    samples.append(to_sample(f"{scene.id}-{kind}{suffix}", scene.image, turns, rng))
    return samples


# --- evaluation sets ------------------------------------------------------------------------


def _question(qid: str, scene: Scene, qa: QA) -> dict[str, Any]:
    record = {
        "id": qid,
        "image": scene.image,
        "question": qa.question,
        "prompt": f"{qa.question}\n{SHORT_ANSWER_PROMPT}",
        "answer": qa.answer,
        "category": qa.category,
        "num_choices": qa.num_choices,
    }
    record.update(qa.extra)
    return record


def build_eval_sets(
    test_scenes: Iterable[Scene | dict], seed: int = 0, stats: WorldStats | None = None, pope_per_image: int = 3
) -> dict[str, list[dict[str, Any]]]:
    """Held-out questions with exact answers: vqa, counting, ocr, region, pope.

    Counting asks only about present categories and kinds (answers 1..max). POPE asks, per
    image and strategy, k = min(pope_per_image, present, absent) present categories (the
    same ones for every strategy) and k absent ones, so each strategy is balanced.
    `stats` defaults to the test scenes' own, as POPE computes popularity on its images.
    """
    scenes = _as_scenes(test_scenes)
    stats = stats or WorldStats.from_scenes(scenes)
    sets: dict[str, list[dict[str, Any]]] = {name: [] for name in EVAL_SETS}
    for scene in scenes:
        rng = random.Random(f"llavakit-eval:{seed}:{scene.id}")
        asked = 0
        for name in _shuffled(rng, VQA_QUESTIONS):
            qa = VQA_QUESTIONS[name](scene, rng, stats) if asked < 2 else None
            if qa is not None:
                sets["vqa"].append(_question(f"{scene.id}-vqa-{name}", scene, qa))
                asked += 1
        for by in ("category", "kind"):
            qa = counting_qa(scene, rng, stats, by)
            sets["counting"].append(_question(f"{scene.id}-count-{by}", scene, qa))
        qa = ocr_qa(scene, rng, stats)
        if qa:
            sets["ocr"].append(_question(f"{scene.id}-ocr", scene, qa))
        qa = region_qa(scene, rng, stats)
        if qa:
            sets["region"].append(_question(f"{scene.id}-region", scene, qa))
        present = sorted(scene.counts())
        k = min(pope_per_image, len(present), len(set(stats.categories) - set(present)))
        positives = rng.sample(present, k)
        for strategy in POPE_STRATEGIES:
            questions = [pope_qa(c, True, strategy) for c in positives]
            questions += [pope_qa(c, False, strategy) for c in pope_negatives(present, stats, strategy, k, rng)]
            for n, qa in enumerate(_shuffled(rng, questions)):
                sets["pope"].append(_question(f"{scene.id}-pope-{strategy}-{n}", scene, qa))
    return sets


# --- files ----------------------------------------------------------------------------------


def write_instruct_files(
    world_dir: str | Path, out_dir: str | Path | None = None, seed: int = 0, overwrite: bool = True
) -> dict[str, Path]:
    """From a `synth.write_world` folder write pretrain.json, instruct.json, documents.jsonl (interleaved
    image-text documents), text.jsonl (a text-only corpus) and eval_<set>.jsonl.

    Image paths stay relative to `world_dir` (use it as the image folder). Training data
    uses the training scenes' statistics; evaluation sets use the test scenes'. With
    `overwrite` False, files of these names already in the output folder are refused
    (`OutputExistsError`) before anything is written; other files there are never touched.
    """
    world = Path(world_dir)
    out = check_writable_dir(out_dir if out_dir is not None else world, "instruct output folder")
    train = load_scenes(_world_file(world, "scenes_train.jsonl"))
    test = load_scenes(_world_file(world, "scenes_test.jsonl"))
    if not overwrite:
        names = ["pretrain.json", "instruct.json", "documents.jsonl", "text.jsonl"]
        _refuse_existing(out, [*names, *(f"eval_{name}.jsonl" for name in EVAL_SETS)])
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "pretrain": out / "pretrain.json",
        "instruct": out / "instruct.json",
        "documents": out / "documents.jsonl",
        "text": out / "text.jsonl",
    }
    write_json(paths["pretrain"], build_pretrain_data(train, seed))
    write_json(paths["instruct"], build_instruct_data(train, seed=seed))
    _write_jsonl(paths["documents"], build_documents(train, seed))
    _write_jsonl(paths["text"], build_text_corpus(train))
    if test:
        for name, questions in build_eval_sets(test, seed).items():
            paths[f"eval_{name}"] = out / f"eval_{name}.jsonl"
            _write_jsonl(paths[f"eval_{name}"], questions)
    return paths


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def _world_file(world: Path, name: str) -> Path:
    """A file of a synthetic world; a folder without it is not a world (`DataError`)."""
    if not (world / name).is_file():
        what = "does not exist" if not world.exists() else f"has no {name}"
        raise DataError(f"{world} {what}: give a folder written by `llavakit data synth`")
    return world / name


def _refuse_existing(out: Path, names: Sequence[str]) -> None:
    existing = [name for name in names if (out / name).exists()]
    if existing:
        raise OutputExistsError(
            f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them, or choose another --output"
        )


def write_json(path: Path, data: Any) -> None:
    """A LLaVA-style JSON file (one list of records), UTF-8 with LF line ends on every platform."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1)
        handle.write("\n")
